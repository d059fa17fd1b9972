//! Locks on names, so that a change the committer would refuse is refused before its record is
//! appended. Every record is a claim a rebuild believes (the newest sequence number of a name
//! wins), so a record whose change was refused after it landed — a conditional PUT that lost,
//! a bucket created twice, a bucket deleted while an object was written into it — would come
//! back from a rebuild as if it had happened. Writers that change an object hold its key's
//! lock, and a shared lock on its bucket, from checking their conditions to the index write;
//! bucket creation and deletion hold the bucket's lock alone. The guards go to the committer with
//! the change and are released once it is applied, also when the client stops waiting (its
//! request dropped): the next writer's check then sees the index the change left. Locks are
//! striped: unrelated names share a stripe now and then, which only serializes them.

use std::hash::{Hash, Hasher};

use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// Stripes of bucket locks.
const BUCKET_STRIPES: usize = 64;
/// Stripes of object key locks.
const KEY_STRIPES: usize = 1024;

/// The engine's name locks.
#[derive(Debug)]
pub struct NameLocks {
    buckets: Vec<Arc<RwLock<()>>>,
    keys: Vec<Arc<RwLock<()>>>,
}

/// Held while an object's version changes: the bucket cannot be created or deleted meanwhile,
/// and nobody else changes the key.
#[derive(Debug)]
pub struct ObjectLock {
    _key: OwnedRwLockWriteGuard<()>,
    _bucket: OwnedRwLockReadGuard<()>,
}

/// Held while a part of an upload of the key is stored: parts of one upload go on side by side,
/// but not beside the upload's completion or abort (which hold an [`ObjectLock`]).
#[derive(Debug)]
pub struct PartLock {
    _key: OwnedRwLockReadGuard<()>,
    _bucket: OwnedRwLockReadGuard<()>,
}

fn stripe(parts: &[&str], stripes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    (h.finish() % stripes as u64) as usize
}

impl Default for NameLocks {
    fn default() -> Self {
        NameLocks {
            buckets: (0..BUCKET_STRIPES).map(|_| Arc::default()).collect(),
            keys: (0..KEY_STRIPES).map(|_| Arc::default()).collect(),
        }
    }
}

impl NameLocks {
    /// Locks `key` of `bucket` for a change of its version (and the bucket against creation
    /// and deletion).
    pub async fn object(&self, bucket: &str, key: &str) -> ObjectLock {
        let bucket_lock = self.bucket_shared(bucket).await;
        let key_lock = self.key_stripe(bucket, key).write_owned().await;
        ObjectLock {
            _key: key_lock,
            _bucket: bucket_lock,
        }
    }

    /// Locks `key` of `bucket` for storing a part of one of its uploads.
    pub async fn part(&self, bucket: &str, key: &str) -> PartLock {
        let bucket_lock = self.bucket_shared(bucket).await;
        let key_lock = self.key_stripe(bucket, key).read_owned().await;
        PartLock {
            _key: key_lock,
            _bucket: bucket_lock,
        }
    }

    /// Locks `bucket` against object changes while it is used without changing it (an upload
    /// created in it).
    pub async fn bucket_shared(&self, bucket: &str) -> OwnedRwLockReadGuard<()> {
        self.buckets[stripe(&[bucket], BUCKET_STRIPES)]
            .clone()
            .read_owned()
            .await
    }

    fn key_stripe(&self, bucket: &str, key: &str) -> Arc<RwLock<()>> {
        self.keys[stripe(&[bucket, key], KEY_STRIPES)].clone()
    }

    /// Locks `bucket` for its creation or deletion.
    pub async fn bucket(&self, bucket: &str) -> OwnedRwLockWriteGuard<()> {
        self.buckets[stripe(&[bucket], BUCKET_STRIPES)]
            .clone()
            .write_owned()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_key_lock_excludes_its_key_and_a_bucket_lock_its_objects() {
        let locks = NameLocks::default();
        let held = locks.object("b", "k").await;
        let again = tokio::time::timeout(Duration::from_millis(50), locks.object("b", "k"));
        assert!(again.await.is_err(), "the same key waits");
        let bucket = tokio::time::timeout(Duration::from_millis(50), locks.bucket("b"));
        assert!(
            bucket.await.is_err(),
            "the bucket's creation or deletion waits"
        );
        drop(held);
        // Parts of the key go on side by side, but not beside a change of its version.
        let part = locks.part("b", "k").await;
        let _other_part = locks.part("b", "k").await;
        let change = tokio::time::timeout(Duration::from_millis(50), locks.object("b", "k"));
        assert!(
            change.await.is_err(),
            "completing the upload waits for its parts"
        );
        drop((part, _other_part));
        let _bucket = locks.bucket("b").await;
        let object = tokio::time::timeout(Duration::from_millis(50), locks.object("b", "k2"));
        assert!(object.await.is_err(), "objects wait for the bucket");
    }
}
