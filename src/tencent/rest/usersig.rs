//! The admin account's UserSig (Tencent's TLSSigAPIv2), which authenticates every REST call.
//!
//! `TLS.sig` is the standard base64 of HMAC-SHA256, keyed by the app's secret key, over
//! `"TLS.identifier:{id}\nTLS.sdkappid:{appid}\nTLS.time:{t}\nTLS.expire:{secs}\n"`; the
//! UserSig is a JSON document holding it with the inputs, zlib-compressed and base64-encoded
//! with `+ / =` spelled `* - _`. Tencent's own libraries differ byte for byte (JSON spacing,
//! compression level), so a UserSig is checked by [`verify`]ing it, never by comparing strings.

use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::core::secret::Secret;

/// What a UserSig says about itself once decoded and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub identifier: String,
    pub sdkappid: u64,
    /// Unix seconds at which it was made.
    pub time: u64,
    /// Seconds of validity from `time`.
    pub expire: u64,
}

impl Claims {
    /// The Unix second from which it is no longer accepted.
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }
}

#[derive(Serialize, Deserialize)]
struct Document {
    #[serde(rename = "TLS.ver")]
    ver: String,
    #[serde(rename = "TLS.identifier")]
    identifier: String,
    #[serde(rename = "TLS.sdkappid")]
    sdkappid: u64,
    #[serde(rename = "TLS.expire")]
    expire: u64,
    #[serde(rename = "TLS.time")]
    time: u64,
    #[serde(rename = "TLS.sig")]
    sig: String,
}

/// Why a UserSig was refused by [`verify`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a UserSig: {0}")]
    Malformed(String),
    #[error("signed with another key")]
    WrongKey,
    #[error("expired at {0}")]
    Expired(u64),
}

fn signature(key: &Secret, identifier: &str, sdkappid: u64, time: u64, expire: u64) -> String {
    let text =
        format!("TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(text.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A UserSig for `identifier` of app `sdkappid`, made at Unix second `now`, valid `expire` s.
pub fn generate(key: &Secret, identifier: &str, sdkappid: u64, now: u64, expire: u64) -> String {
    let document = Document {
        ver: "2.0".into(),
        identifier: identifier.into(),
        sdkappid,
        expire,
        time: now,
        sig: signature(key, identifier, sdkappid, now, expire),
    };
    let json = serde_json::to_vec(&document).expect("a struct of strings and numbers");
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&json).expect("writing to a Vec");
    let compressed = zlib.finish().expect("writing to a Vec");
    STANDARD
        .encode(compressed)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

/// Decodes `usersig` and checks its signature with `key` and its validity at `now` (what
/// Tencent does with every call; the tests' REST simulator uses it).
pub fn verify(key: &Secret, usersig: &str, now: u64) -> Result<Claims, VerifyError> {
    let malformed = |what: &str| VerifyError::Malformed(what.to_string());
    let standard: String = usersig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    let compressed = STANDARD.decode(standard).map_err(|_| malformed("base64"))?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(64 * 1024)
        .read_to_end(&mut json)
        .map_err(|_| malformed("zlib"))?;
    let doc: Document = serde_json::from_slice(&json).map_err(|e| malformed(&e.to_string()))?;
    if doc.ver != "2.0" {
        return Err(malformed("TLS.ver is not 2.0"));
    }
    let expected = signature(key, &doc.identifier, doc.sdkappid, doc.time, doc.expire);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes(),
        doc.sig.as_bytes(),
    )) {
        return Err(VerifyError::WrongKey);
    }
    let claims = Claims {
        identifier: doc.identifier,
        sdkappid: doc.sdkappid,
        time: doc.time,
        expire: doc.expire,
    };
    if now >= claims.expires_at() {
        return Err(VerifyError::Expired(claims.expires_at()));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    #[test]
    fn a_fixed_vector_decodes_and_verifies() {
        // HMAC-SHA256(KEY, "TLS.identifier:administrator\nTLS.sdkappid:1400000000\n
        // TLS.time:1700000000\nTLS.expire:86400\n"), standard base64, computed independently
        // with Python's hmac module (docs/auditor.md shows the command).
        assert_eq!(
            signature(
                &Secret::new(KEY),
                "administrator",
                1400000000,
                1700000000,
                86400
            ),
            "yLAe+w7WUeUuqbV9h/TX78u21oTGi+i9Zp1u3PpnY60="
        );
        let sig = generate(
            &Secret::new(KEY),
            "administrator",
            1400000000,
            1700000000,
            86400,
        );
        assert!(!sig.contains(['+', '/', '=']), "{sig}");
        let claims = verify(&Secret::new(KEY), &sig, 1700000001).unwrap();
        assert_eq!(
            claims,
            Claims {
                identifier: "administrator".into(),
                sdkappid: 1400000000,
                time: 1700000000,
                expire: 86400
            }
        );
    }

    #[test]
    fn another_key_or_a_late_check_is_refused() {
        let sig = generate(&Secret::new(KEY), "admin", 1, 1000, 60);
        assert_eq!(
            verify(&Secret::new("other"), &sig, 1001),
            Err(VerifyError::WrongKey)
        );
        assert_eq!(
            verify(&Secret::new(KEY), &sig, 1060),
            Err(VerifyError::Expired(1060))
        );
        assert!(matches!(
            verify(&Secret::new(KEY), "not a sig", 1001),
            Err(VerifyError::Malformed(_))
        ));
    }

    /// A UserSig made the way Tencent's Python library makes it (`json.dumps` with spaces,
    /// zlib level 9) verifies too: the check does not depend on our byte layout.
    #[test]
    fn another_libraries_layout_verifies() {
        let sig = signature(&Secret::new(KEY), "admin", 7, 5000, 600);
        let json = format!(
            "{{\"TLS.ver\": \"2.0\", \"TLS.identifier\": \"admin\", \"TLS.sdkappid\": 7, \"TLS.expire\": 600, \"TLS.time\": 5000, \"TLS.sig\": \"{sig}\"}}"
        );
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        zlib.write_all(json.as_bytes()).unwrap();
        let encoded = STANDARD
            .encode(zlib.finish().unwrap())
            .replace('+', "*")
            .replace('/', "-")
            .replace('=', "_");
        assert_eq!(
            verify(&Secret::new(KEY), &encoded, 5001).unwrap().sdkappid,
            7
        );
    }
}
