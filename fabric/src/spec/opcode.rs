//! Command opcodes (NVMe Base 2.0 Figure 28 admin, NVM Command Set Figure 14, ZNS Figure 17,
//! NVMe over Fabrics Figure 15 fabrics command types).

/// Admin opcodes.
pub mod admin {
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// I/O opcodes of the NVM and Zoned Namespace command sets.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Zone Management Send.
    pub const ZONE_MGMT_SEND: u8 = 0x79;
    /// Zone Management Receive.
    pub const ZONE_MGMT_RECV: u8 = 0x7A;
    /// Zone Append.
    pub const ZONE_APPEND: u8 = 0x7D;
}

/// The Fabrics command opcode; the command type is in byte 4 (FCTYPE).
pub const FABRICS: u8 = 0x7F;

/// Fabrics command types.
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// Feature identifiers (Set/Get Features).
pub mod feature {
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

/// Log page identifiers.
pub mod log {
    /// Error Information.
    pub const ERROR_INFORMATION: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART_HEALTH: u8 = 0x02;
    /// Changed Namespace List.
    pub const CHANGED_NAMESPACES: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const COMMANDS_EFFECTS: u8 = 0x05;
    /// Discovery.
    pub const DISCOVERY: u8 = 0x70;
}

/// Command Set Identifiers.
pub mod csi {
    /// NVM Command Set.
    pub const NVM: u8 = 0x00;
    /// Zoned Namespace Command Set.
    pub const ZNS: u8 = 0x02;
}

/// Data direction of a command from its opcode bits 1:0 (or FCTYPE for Fabrics commands):
/// `true` when the host sends data to the controller.
pub fn host_to_controller(opcode: u8, fctype: u8) -> bool {
    let bits = if opcode == FABRICS { fctype } else { opcode };
    bits & 0x01 != 0
}

/// `true` when the controller sends data to the host.
pub fn controller_to_host(opcode: u8, fctype: u8) -> bool {
    let bits = if opcode == FABRICS { fctype } else { opcode };
    bits & 0x02 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_direction_follows_opcode_bits() {
        assert!(host_to_controller(io::WRITE, 0));
        assert!(host_to_controller(io::ZONE_APPEND, 0));
        assert!(controller_to_host(io::READ, 0));
        assert!(controller_to_host(io::ZONE_MGMT_RECV, 0));
        assert!(controller_to_host(admin::IDENTIFY, 0));
        assert!(host_to_controller(FABRICS, fctype::CONNECT));
        assert!(!host_to_controller(FABRICS, fctype::PROPERTY_GET));
        assert!(!host_to_controller(io::FLUSH, 0) && !controller_to_host(io::FLUSH, 0));
    }
}
