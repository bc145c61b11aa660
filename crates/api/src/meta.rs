//! Values the server sets in `metadata`: a fresh uid and the creation time.

use std::time::SystemTime;

/// A random (version 4) RFC 4122 uid, as Kubernetes gives every object.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The letters of generated names: no vowels, no look-alikes (as Kubernetes' `generateName`).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` random characters for a generated name (`web-7d9f8-x4k2p`).
pub fn random_suffix(n: usize) -> String {
    (0..n)
        .map(|_| NAME_ALPHABET[rand::random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// A number spelled in the letters of generated names, as a pod template's hash is.
pub fn safe_encode(n: u64) -> String {
    n.to_string()
        .bytes()
        .map(|d| NAME_ALPHABET[usize::from(d - b'0') * 3 % NAME_ALPHABET.len()] as char)
        .collect()
}

/// Now as an RFC 3339 UTC timestamp with whole seconds (`2026-12-01T03:10:48Z`).
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `at` as an RFC 3339 UTC timestamp with whole seconds.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `at` as an RFC 3339 UTC timestamp with milliseconds, where a second is too coarse (a taint's
/// `timeAdded`, from which a toleration of one second counts).
pub fn rfc3339_millis(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Parses a `metadata` timestamp; `None` if it is not RFC 3339.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_and_timestamps_have_the_kubernetes_shape() {
        let uid = new_uid();
        assert_eq!(&uid[14..15], "4", "version 4: {uid}");
        assert!("89ab".contains(&uid[19..20]), "RFC 4122 variant: {uid}");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.matches('-').count(), 4);
        assert_ne!(new_uid(), uid);
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T');
    }
}
