//! Controller properties read and written with Property Get/Set (NVMe Base 2.0 §3.1.3): CAP, VS,
//! CC and CSTS, with the fields a fabrics host uses.

/// Offset of Controller Capabilities (8 bytes).
pub const CAP: u32 = 0x00;
/// Offset of Version (4 bytes).
pub const VS: u32 = 0x08;
/// Offset of Controller Configuration (4 bytes).
pub const CC: u32 = 0x14;
/// Offset of Controller Status (4 bytes).
pub const CSTS: u32 = 0x1C;

/// Version 1.4.0.
pub const VERSION_1_4: u32 = 0x0001_0400;

/// CAP for a controller whose queues hold up to `max_entries` entries: MQES, timeout 7.5 s,
/// NVM command set and "one or more I/O command sets" (CSS bits 0 and 6, which a host needs to
/// select the Zoned Namespace command set), 4 KiB pages.
pub fn capabilities(max_entries: u16) -> u64 {
    let mqes = u64::from(max_entries.saturating_sub(1));
    let timeout = 15u64 << 24;
    let css = (1u64 << 37) | (1u64 << 43);
    mqes | timeout | css
}

/// CC.EN.
pub const CC_EN: u32 = 1 << 0;
/// CC.SHN field mask (bits 15:14).
pub const CC_SHN_MASK: u32 = 0x3 << 14;
/// CC.CSS field (bits 6:4) value "all supported I/O command sets".
pub const CC_CSS_ALL: u32 = 0x6 << 4;
/// CC.IOSQES = 6 (64-byte entries) and CC.IOCQES = 4 (16-byte entries).
pub const CC_ENTRY_SIZES: u32 = (6 << 16) | (4 << 20);

/// CSTS.RDY.
pub const CSTS_RDY: u32 = 1 << 0;
/// CSTS.CFS (controller fatal status).
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST = shutdown complete.
pub const CSTS_SHST_COMPLETE: u32 = 0x2 << 2;
/// CSTS.SHST: shutdown processing occurring.
pub const CSTS_SHST_OCCURRING: u32 = 0x1 << 2;
/// CSTS.SHST: the whole field.
pub const CSTS_SHST_MASK: u32 = 0x3 << 2;

/// Whether a CC value asks for an enable that this controller supports (NVMe Base §3.1.3.6):
/// 64/16-byte entries, 4 KiB pages, round robin, NVM or all command sets. A discovery
/// controller has no I/O queues, and a host may leave their entry sizes 0 (as nvmet accepts).
pub fn cc_is_valid_for_enable(cc: u32, discovery: bool) -> bool {
    let css = (cc >> 4) & 0x7;
    let mps = (cc >> 7) & 0xF;
    let ams = (cc >> 11) & 0x7;
    let iosqes = (cc >> 16) & 0xF;
    let iocqes = (cc >> 20) & 0xF;
    (css == 0 || css == 6) && mps == 0 && ams == 0 && (discovery || (iosqes == 6 && iocqes == 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_match_nvmet() {
        // nvmet with 1024-entry queues returns 0x0000_0820_0F00_03FF.
        assert_eq!(capabilities(1024), 0x0000_0820_0F00_03FF);
    }

    #[test]
    fn linux_cc_values_are_accepted() {
        assert!(cc_is_valid_for_enable(0x0046_0061, false));
        assert!(!cc_is_valid_for_enable(0x0046_0061 | (1 << 7), false));
        // Entry sizes 0: only for a discovery controller.
        assert!(!cc_is_valid_for_enable(0x0000_0061, false));
        assert!(cc_is_valid_for_enable(0x0000_0061, true));
        assert_eq!(CC_CSS_ALL | CC_ENTRY_SIZES | CC_EN, 0x0046_0061);
    }
}
