//! An NVM subsystem: an NQN, one zoned namespace (or none, for the discovery subsystem), the
//! hosts allowed to connect, and the controllers hosts have created.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use parking_lot::Mutex;
use zns::ZonedDevice;

use super::controller::Controller;
use crate::spec::DISCOVERY_NQN;

/// One subsystem of a target.
pub struct Subsystem {
    /// Subsystem NQN.
    pub nqn: String,
    /// The namespace's drive (namespace ID 1); `None` for the discovery subsystem.
    pub device: Option<Arc<dyn ZonedDevice>>,
    /// Host NQNs allowed to connect; empty admits any host.
    pub allowed_hosts: Vec<String>,
    /// Serial number, derived from the NQN so that it is stable across restarts.
    pub serial: String,
    /// Namespace UUID, derived from the NQN.
    pub uuid: [u8; 16],
    /// Namespace globally unique identifier: the drive's identity (see
    /// [`ZonedDevice::identity`]), or for a drive without one, derived from the NQN.
    pub nguid: [u8; 16],
    controllers: Mutex<HashMap<u16, Arc<Controller>>>,
    next_cntlid: AtomicU16,
}

impl std::fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subsystem").field("nqn", &self.nqn).finish()
    }
}

/// 16 stable bytes derived from `text` (two differently seeded CRC32C passes per half).
fn fingerprint(text: &str, salt: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
        let crc = crc32c::crc32c_append(u32::from(salt) << 8 | i as u32, text.as_bytes());
        chunk.copy_from_slice(&crc.to_le_bytes());
    }
    out
}

/// The NGUID a namespace whose drive has no identity is given (derived from the NQN, stable
/// across restarts); a host reads it as no identity.
pub(crate) fn nqn_fingerprint(nqn: &str) -> [u8; 16] {
    fingerprint(nqn, 3)
}

impl Subsystem {
    /// A subsystem exporting `device`.
    pub fn new(nqn: &str, device: Arc<dyn ZonedDevice>, allowed_hosts: Vec<String>) -> Self {
        // A drive with an identity gets a namespace UUID of its own too: a Linux host names
        // its disk by the UUID first (/dev/disk/by-id), and another drive must not take it.
        let mut uuid = match device.identity() {
            Some(identity) => fingerprint(&format!("{nqn}/{identity:02x?}"), 1),
            None => fingerprint(nqn, 1),
        };
        uuid[6] = (uuid[6] & 0x0F) | 0x40; // RFC 4122 version 4 layout
        uuid[8] = (uuid[8] & 0x3F) | 0x80;
        let serial: String = fingerprint(nqn, 2)
            .iter()
            .take(10)
            .map(|b| format!("{b:02x}"))
            .collect();
        Subsystem {
            nqn: nqn.to_string(),
            nguid: device.identity().unwrap_or_else(|| nqn_fingerprint(nqn)),
            device: Some(device),
            allowed_hosts,
            serial,
            uuid,
            controllers: Mutex::new(HashMap::new()),
            next_cntlid: AtomicU16::new(1),
        }
    }

    /// The discovery subsystem.
    pub fn discovery() -> Self {
        Subsystem {
            nqn: DISCOVERY_NQN.to_string(),
            device: None,
            allowed_hosts: Vec::new(),
            serial: "zonestore-discovery".into(),
            uuid: [0; 16],
            nguid: [0; 16],
            controllers: Mutex::new(HashMap::new()),
            next_cntlid: AtomicU16::new(1),
        }
    }

    /// Whether this is the discovery subsystem.
    pub fn is_discovery(&self) -> bool {
        self.device.is_none()
    }

    /// Whether `hostnqn` may connect.
    pub fn allows(&self, hostnqn: &str) -> bool {
        self.allowed_hosts.is_empty() || self.allowed_hosts.iter().any(|h| h == hostnqn)
    }

    /// Registers the controller `make` builds for a fresh controller ID (1..=0xFFEF, skipping
    /// IDs in use), chosen and taken under one lock so that two Connects racing never share
    /// one; None when every ID is in use.
    pub(crate) fn register_new(
        &self,
        make: impl FnOnce(u16) -> Controller,
    ) -> Option<Arc<Controller>> {
        let mut controllers = self.controllers.lock();
        for _ in 0..0xFFEF {
            let id = self.next_cntlid.fetch_add(1, Ordering::Relaxed);
            let id = (id % 0xFFEF).max(1);
            if let std::collections::hash_map::Entry::Vacant(slot) = controllers.entry(id) {
                let controller = Arc::new(make(id));
                slot.insert(controller.clone());
                return Some(controller);
            }
        }
        None
    }

    pub(crate) fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.controllers.lock().get(&cntlid).cloned()
    }

    /// Forgets `controller` (not another that has its ID since).
    pub(crate) fn unregister(&self, controller: &Controller) {
        let mut controllers = self.controllers.lock();
        if controllers
            .get(&controller.cntlid)
            .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), controller))
        {
            controllers.remove(&controller.cntlid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_stable_and_distinct() {
        assert_eq!(fingerprint("nqn.a", 1), fingerprint("nqn.a", 1));
        assert_ne!(fingerprint("nqn.a", 1), fingerprint("nqn.b", 1));
        assert_ne!(fingerprint("nqn.a", 1), fingerprint("nqn.a", 2));
    }
}
