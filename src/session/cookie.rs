//! The session and login-binding cookies: random ids signed with HMAC-SHA256.
//!
//! Invariants: an id is 256 random bits from the OS-seeded CSPRNG; a cookie verifies only if
//! its MAC matches under the key for its purpose (a binding cookie never verifies as a
//! session, and vice versa), compared in constant time; any change to any byte fails.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A fresh random id, as URL-safe base64 (43 characters).
pub fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The store key for an id: its SHA-256, so that whoever reads the store cannot present the
/// ids it finds there (they would still need the cookie key, but two locks beat one).
pub fn store_key(id: &str) -> String {
    hex(&digest(id))
}

/// SHA-256 of an id: the local cache's key (no allocation), hex-encoded for the store.
pub fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// `digest` as 64 lower-case hex digits: the store key of an id.
pub fn hex(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for &b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// The digest a store key names; `None` for anything that is not 64 lower-case hex digits.
pub fn parse_hex(key: &str) -> Option<[u8; 32]> {
    let bytes = key.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// What a signed value is for; each purpose signs with its own derived key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The session cookie.
    Session,
    /// The binding cookie, which ties a login attempt to the browser that started it.
    LoginBinding,
}

/// Holds each purpose's HMAC already keyed: cloning a keyed state is a copy, while keying
/// costs two SHA-256 blocks on every cookie checked.
#[derive(Clone)]
pub struct CookieCodec {
    session: HmacSha256,
    binding: HmacSha256,
}

impl std::fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieCodec(..)")
    }
}

impl CookieCodec {
    /// `secret` is the decoded cookie secret (≥ 32 bytes, checked by the config loader).
    pub fn new(secret: &[u8]) -> Self {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        let keyed = |label: &[u8]| {
            HmacSha256::new_from_slice(&derive(label)).expect("HMAC takes any key length")
        };
        Self {
            session: keyed(b"jacker-gate session cookie v1"),
            binding: keyed(b"jacker-gate login binding v1"),
        }
    }

    fn mac(&self, purpose: Purpose) -> HmacSha256 {
        match purpose {
            Purpose::Session => self.session.clone(),
            Purpose::LoginBinding => self.binding.clone(),
        }
    }

    /// `id.mac`, both URL-safe base64: safe in a cookie value without quoting. `id` is one of
    /// [`random_id`]'s ids.
    pub fn sign(&self, purpose: Purpose, id: &str) -> String {
        let mut mac = self.mac(purpose);
        mac.update(id.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{id}.{tag}")
    }

    /// The id inside `value` (`id.mac`) if the id has the shape of a [`random_id`] and the
    /// signature holds for `purpose`; `None` otherwise.
    pub fn verify<'a>(&self, purpose: Purpose, value: &'a str) -> Option<&'a str> {
        let (id, tag) = value.split_once('.')?;
        if id.len() != 43
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = self.mac(purpose);
        mac.update(id.as_bytes());
        mac.verify_slice(&tag).ok()?;
        Some(id)
    }
}

/// Every value of the cookie `name` in the request's `Cookie` headers, in order. Browsers may
/// send several with one name (different paths or domains); the caller tries each.
pub fn cookie_values<'a>(
    headers: impl Iterator<Item = &'a [u8]>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .filter_map(|h| std::str::from_utf8(h).ok())
        .flat_map(|h| h.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let codec = CookieCodec::new(&[7u8; 32]);
        let id = random_id();
        assert_eq!(id.len(), 43);
        assert_ne!(id, random_id());
        let value = codec.sign(Purpose::Session, &id);
        assert_eq!(codec.verify(Purpose::Session, &value), Some(id.as_str()));
        // Purposes do not mix, and other keys do not verify.
        assert_eq!(codec.verify(Purpose::LoginBinding, &value), None);
        assert_eq!(
            CookieCodec::new(&[8u8; 32]).verify(Purpose::Session, &value),
            None
        );
    }

    #[test]
    fn any_changed_byte_fails() {
        let codec = CookieCodec::new(b"0123456789abcdef0123456789abcdef");
        let value = codec.sign(Purpose::Session, &random_id());
        let bytes = value.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'A', b'_', b'.', b'0'] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[i] = replacement;
                let changed = String::from_utf8(changed).unwrap();
                assert_eq!(codec.verify(Purpose::Session, &changed), None, "{changed}");
            }
        }
        for bad in [
            "",
            ".",
            "abc",
            &value[..value.len() - 1],
            &format!("{value}A"),
        ] {
            assert_eq!(codec.verify(Purpose::Session, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cookie_parsing() {
        let headers: Vec<&[u8]> = vec![b"a=1; _jg=one; b=2", b"_jg=\"two\"", b"_jgx=no"];
        let got: Vec<&str> = cookie_values(headers.into_iter(), "_jg").collect();
        assert_eq!(got, ["one", "two"]);
        assert_eq!(store_key("x").len(), 64);
        assert_eq!(parse_hex(&store_key("x")), Some(digest("x")));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"A".repeat(64)), None);
    }
}
