//! AWS Signature Version 2 for presigned URLs (what `aws s3 presign` and boto3's
//! `generate_presigned_url` produce by default) and the `Authorization: AWS key:sig` header:
//! HMAC-SHA1 over method, Content-MD5, Content-Type, expiry or date, x-amz headers and the
//! resource with its sub-resources.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;

use crate::query;
use sha1::Sha1;

/// Query parameters that are part of the signed resource.
const SUBRESOURCES: &[&str] = &[
    "acl",
    "accelerate",
    "analytics",
    "cors",
    "defaultObjectAcl",
    "delete",
    "inventory",
    "lifecycle",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "partNumber",
    "policy",
    "replication",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "select",
    "select-type",
    "storageClass",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

/// The string to sign. `expires_or_date` is the Expires query value (presigned) or the Date
/// header (header auth; empty when x-amz-date is sent). `resource_path` is `/bucket/key` (raw,
/// still encoded). A `presigned` URL carries its `x-amz-*` headers as query parameters (SDK
/// presigners move them there), so those count among the signed headers.
pub fn string_to_sign(
    method: &str,
    headers: &HeaderMap,
    raw_query: Option<&str>,
    expires_or_date: &str,
    resource_path: &str,
    presigned: bool,
) -> String {
    // A value that is not ASCII is signed as it came (taking it for no value let a presigned
    // URL signed without a Content-Type be sent with any Content-Type holding one such byte).
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .unwrap_or_default()
    };
    let mut amz: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let n = name.as_str().to_ascii_lowercase();
        if n.starts_with("x-amz-") {
            let v = String::from_utf8_lossy(value.as_bytes()).trim().to_string();
            match amz.iter_mut().find(|(k, _)| *k == n) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(&v);
                }
                None => amz.push((n, v)),
            }
        }
    }
    let mut sub: Vec<(String, Option<String>)> = Vec::new();
    for pair in raw_query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .map_or((pair, None), |(k, v)| (k, Some(v)));
        let k = query::decode(k);
        let v = v.map(query::decode);
        // Any case: the service takes `X-Amz-...` query parameters of a presigned URL as
        // headers, so every one of them must be signed.
        if presigned && k.to_ascii_lowercase().starts_with("x-amz-") {
            amz.push((k.to_ascii_lowercase(), v.unwrap_or_default()));
        } else if SUBRESOURCES.contains(&k.as_str()) {
            sub.push((k, v));
        }
    }
    amz.sort();
    sub.sort();
    let mut resource = resource_path.to_string();
    if !sub.is_empty() {
        resource.push('?');
        resource.push_str(
            &sub.iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k.clone(),
                })
                .collect::<Vec<_>>()
                .join("&"),
        );
    }
    let amz_block: String = amz.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    format!(
        "{method}\n{}\n{}\n{expires_or_date}\n{amz_block}{resource}",
        header("content-md5"),
        header("content-type")
    )
}

/// The base64 HMAC-SHA1 signature.
pub fn sign(secret: &str, string_to_sign: &str) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    #[test]
    fn presigned_examples_from_the_cli() {
        assert_eq!(
            sign(SECRET, "GET\n\n\n1795632038\n/bkt/a%20b/c%2Bd"),
            "+Mj+3n/LelQQ0GCkNE9dre6Kv1c="
        );
        assert_eq!(
            sign(SECRET, "PUT\n\ntext/plain\n1796233238\n/bkt/k"),
            "gtT5B4NIjYyoJt6QI6svW5Fze2A="
        );
    }

    /// A Content-Type that is not ASCII is signed as sent: a URL signed without one does not
    /// take one holding such a byte.
    #[test]
    fn a_content_type_that_is_not_ascii_is_signed_as_sent() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            http::HeaderValue::from_bytes("text/html; x=\u{e9}".as_bytes()).unwrap(),
        );
        let s = string_to_sign("PUT", &h, None, "5", "/b/k", true);
        assert_eq!(s, "PUT\n\ntext/html; x=\u{e9}\n5\n/b/k");
        assert_ne!(
            s,
            string_to_sign("PUT", &HeaderMap::new(), None, "5", "/b/k", true)
        );
    }

    #[test]
    fn string_to_sign_keeps_subresources_and_drops_auth_params() {
        let h = HeaderMap::new();
        let s = string_to_sign(
            "GET",
            &h,
            Some("AWSAccessKeyId=A&Signature=S&Expires=5&uploadId=U1&partNumber=2"),
            "5",
            "/b/k",
            true,
        );
        assert_eq!(s, "GET\n\n\n5\n/b/k?partNumber=2&uploadId=U1");
    }

    #[test]
    fn x_amz_query_parameters_are_signed_headers_only_in_presigned_urls() {
        let h = HeaderMap::new();
        let query = Some("X-Amz-Meta-A=1&uploadId=U1");
        assert_eq!(
            string_to_sign("PUT", &h, query, "5", "/b/k", true),
            "PUT\n\n\n5\nx-amz-meta-a:1\n/b/k?uploadId=U1"
        );
        assert_eq!(
            string_to_sign("PUT", &h, query, "5", "/b/k", false),
            "PUT\n\n\n5\n/b/k?uploadId=U1"
        );
    }
}
