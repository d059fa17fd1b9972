//! Zones as the ZNS Command Set specification defines them: states (§2.1.1, Figure "Zone State
//! Machine"), Zone Management Send actions (§3.4.3), Zone Management Receive filters and zone
//! descriptors (§3.4.2).

use std::fmt;

/// The state of one zone, with its ZNS encoding (the upper nibble of the descriptor's ZS field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ZoneState {
    /// ZSE: no data written, write pointer at the zone start.
    Empty = 0x1,
    /// ZSIO: opened by a write or append.
    ImplicitlyOpened = 0x2,
    /// ZSEO: opened by an Open Zone command.
    ExplicitlyOpened = 0x3,
    /// ZSC: written, not open, still active.
    Closed = 0x4,
    /// ZSRO: readable, never writable again.
    ReadOnly = 0xD,
    /// ZSF: no more writes until reset.
    Full = 0xE,
    /// ZSO: neither readable nor writable.
    Offline = 0xF,
}

impl ZoneState {
    /// Decodes the 4-bit ZNS state encoding.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x1 => ZoneState::Empty,
            0x2 => ZoneState::ImplicitlyOpened,
            0x3 => ZoneState::ExplicitlyOpened,
            0x4 => ZoneState::Closed,
            0xD => ZoneState::ReadOnly,
            0xE => ZoneState::Full,
            0xF => ZoneState::Offline,
            _ => return None,
        })
    }

    /// The 4-bit ZNS state encoding.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether the zone holds an open resource (ZSIO or ZSEO).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened
        )
    }

    /// Whether the zone holds an active resource (ZSIO, ZSEO or ZSC).
    pub fn is_active(self) -> bool {
        self.is_open() || self == ZoneState::Closed
    }

    /// Short name as used in reports and tables.
    pub fn name(self) -> &'static str {
        match self {
            ZoneState::Empty => "empty",
            ZoneState::ImplicitlyOpened => "imp-open",
            ZoneState::ExplicitlyOpened => "exp-open",
            ZoneState::Closed => "closed",
            ZoneState::ReadOnly => "read-only",
            ZoneState::Full => "full",
            ZoneState::Offline => "offline",
        }
    }

    /// All states, in encoding order.
    pub const ALL: [ZoneState; 7] = [
        ZoneState::Empty,
        ZoneState::ImplicitlyOpened,
        ZoneState::ExplicitlyOpened,
        ZoneState::Closed,
        ZoneState::ReadOnly,
        ZoneState::Full,
        ZoneState::Offline,
    ];
}

impl fmt::Display for ZoneState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Zone Management Send action (ZSA, §3.4.3, Figure "Zone Send Action").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ZoneAction {
    /// Close Zone (ZSA 01h).
    Close = 0x1,
    /// Finish Zone (ZSA 02h).
    Finish = 0x2,
    /// Open Zone (ZSA 03h).
    Open = 0x3,
    /// Reset Zone (ZSA 04h).
    Reset = 0x4,
    /// Offline Zone (ZSA 05h): only a Read Only zone may be taken offline.
    Offline = 0x5,
}

impl ZoneAction {
    /// Decodes a ZSA value; Set Zone Descriptor Extension (10h) and unknown values are `None`.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x1 => ZoneAction::Close,
            0x2 => ZoneAction::Finish,
            0x3 => ZoneAction::Open,
            0x4 => ZoneAction::Reset,
            0x5 => ZoneAction::Offline,
            _ => return None,
        })
    }

    /// The ZSA encoding.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for ZoneAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ZoneAction::Close => "close",
            ZoneAction::Finish => "finish",
            ZoneAction::Open => "open",
            ZoneAction::Reset => "reset",
            ZoneAction::Offline => "offline",
        })
    }
}

/// Which zones a management action applies to: one zone by start LBA, or Select All.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneSelect {
    /// The zone whose start LBA (ZSLBA) is given.
    Zone(u64),
    /// Select All: every zone in a state the action applies to.
    All,
}

/// Zone Receive Action Specific Field for Report Zones (ZRASF, §3.4.2.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReportFilter {
    /// List all zones.
    All = 0x0,
    /// Zones in ZSE.
    Empty = 0x1,
    /// Zones in ZSIO.
    ImplicitlyOpened = 0x2,
    /// Zones in ZSEO.
    ExplicitlyOpened = 0x3,
    /// Zones in ZSC.
    Closed = 0x4,
    /// Zones in ZSF.
    Full = 0x5,
    /// Zones in ZSRO.
    ReadOnly = 0x6,
    /// Zones in ZSO.
    Offline = 0x7,
}

impl ReportFilter {
    /// Decodes a ZRASF value.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x0 => ReportFilter::All,
            0x1 => ReportFilter::Empty,
            0x2 => ReportFilter::ImplicitlyOpened,
            0x3 => ReportFilter::ExplicitlyOpened,
            0x4 => ReportFilter::Closed,
            0x5 => ReportFilter::Full,
            0x6 => ReportFilter::ReadOnly,
            0x7 => ReportFilter::Offline,
            _ => return None,
        })
    }

    /// The ZRASF encoding.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether a zone in `state` passes this filter.
    pub fn matches(self, state: ZoneState) -> bool {
        match self {
            ReportFilter::All => true,
            ReportFilter::Empty => state == ZoneState::Empty,
            ReportFilter::ImplicitlyOpened => state == ZoneState::ImplicitlyOpened,
            ReportFilter::ExplicitlyOpened => state == ZoneState::ExplicitlyOpened,
            ReportFilter::Closed => state == ZoneState::Closed,
            ReportFilter::Full => state == ZoneState::Full,
            ReportFilter::ReadOnly => state == ZoneState::ReadOnly,
            ReportFilter::Offline => state == ZoneState::Offline,
        }
    }

    /// All filters, in encoding order.
    pub const ALL: [ReportFilter; 8] = [
        ReportFilter::All,
        ReportFilter::Empty,
        ReportFilter::ImplicitlyOpened,
        ReportFilter::ExplicitlyOpened,
        ReportFilter::Closed,
        ReportFilter::Full,
        ReportFilter::ReadOnly,
        ReportFilter::Offline,
    ];
}

/// One zone as Report Zones describes it (Zone Descriptor, §3.4.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ZoneDescriptor {
    /// Zone state.
    pub state: ZoneState,
    /// Zone start LBA (ZSLBA).
    pub zslba: u64,
    /// Zone capacity in blocks (ZCAP).
    pub zcap: u64,
    /// Write pointer LBA (WP). Meaningful only for Empty, opened and Closed zones.
    pub wp: u64,
}

/// The answer to Report Zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneReport {
    /// How many zones from the start LBA to the end of the namespace match the filter (what the
    /// Number of Zones field holds when the Partial Report bit is clear).
    pub matching: u64,
    /// The first matching zones, no more than were asked for.
    pub zones: Vec<ZoneDescriptor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_codes_round_trip_and_match_the_spec() {
        let codes: Vec<u8> = ZoneState::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, vec![0x1, 0x2, 0x3, 0x4, 0xD, 0xE, 0xF]);
        for s in ZoneState::ALL {
            assert_eq!(ZoneState::from_code(s.code()), Some(s));
        }
        assert_eq!(ZoneState::from_code(0x5), None);
    }

    #[test]
    fn filters_select_exactly_their_state() {
        for f in ReportFilter::ALL {
            assert_eq!(ReportFilter::from_code(f.code()), Some(f));
            let matched = ZoneState::ALL.iter().filter(|s| f.matches(**s)).count();
            assert_eq!(matched, if f == ReportFilter::All { 7 } else { 1 });
        }
    }

    #[test]
    fn open_and_active_resources() {
        assert!(ZoneState::ImplicitlyOpened.is_open());
        assert!(ZoneState::Closed.is_active() && !ZoneState::Closed.is_open());
        assert!(!ZoneState::Full.is_active());
    }
}
