//! Continuation tokens of ListObjectsV2 and ListBuckets: where the next page starts, opaque to
//! clients and checked when they come back, so that a corrupted token, or one from another
//! bucket or user, is refused as S3 refuses it rather than start a quietly wrong page.

use crate::error::S3Error;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Bytes of the check in front of the name a token carries.
const CHECK_LEN: usize = 4;

/// The check of a token for `last` within `scope` (the bucket, or the user listing buckets).
fn check(scope: &str, last: &str) -> [u8; CHECK_LEN] {
    let mut h = crc32fast::Hasher::new();
    h.update(b"zonestore continuation 1\0");
    h.update(scope.as_bytes());
    h.update(b"\0");
    h.update(last.as_bytes());
    h.finalize().to_le_bytes()
}

/// The token of a page that ended at `last`, within `scope`.
pub fn issue(scope: &str, last: &str) -> String {
    let mut bytes = check(scope, last).to_vec();
    bytes.extend_from_slice(last.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Where the page after `token` starts (the name the page before it ended at), if `token` is
/// one [`issue`] gave within `scope`.
pub fn redeem(scope: &str, token: &str) -> Result<String, S3Error> {
    let incorrect = || S3Error::invalid_argument("The continuation token provided is incorrect");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| incorrect())?;
    if bytes.len() <= CHECK_LEN {
        return Err(incorrect());
    }
    let (sent_check, last) = bytes.split_at(CHECK_LEN);
    let last = std::str::from_utf8(last).map_err(|_| incorrect())?;
    if sent_check != check(scope, last) {
        return Err(incorrect());
    }
    Ok(last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_token_of_another_scope_or_altered_is_refused() {
        let token = issue("bucket-a", "photos/2024/");
        assert_eq!(redeem("bucket-a", &token).unwrap(), "photos/2024/");
        assert!(redeem("bucket-b", &token).is_err());
        for bad in ["", "!!", "YQ", &URL_SAFE_NO_PAD.encode("photos/2024/")] {
            assert!(redeem("bucket-a", bad).is_err(), "{bad:?}");
        }
        let mut altered = URL_SAFE_NO_PAD.decode(&token).unwrap();
        *altered.last_mut().unwrap() ^= 1;
        assert!(redeem("bucket-a", &URL_SAFE_NO_PAD.encode(altered)).is_err());
    }

    proptest! {
        #[test]
        fn every_issued_token_is_redeemed_to_its_name(scope in ".{0,20}", last in ".{1,200}") {
            prop_assert_eq!(redeem(&scope, &issue(&scope, &last)).unwrap(), last);
        }
    }
}
