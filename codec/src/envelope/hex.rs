//! Minimal hex encoding and decoding (lowercase out, either case in), so the crate needs no
//! extra dependency for the signature text in the JSON form and the CONNECT password.

/// Indexed only by a nibble (< 16), so the indexing below cannot panic.
const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends the lowercase hex form of `bytes` to `out`.
pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// The lowercase hex form of `bytes` as a `String`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn nibble(c: u8, allow_upper: bool) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' if allow_upper => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes from `2 * N` hex digits. `allow_upper` also accepts `A`-`F`.
/// Returns `None` on a wrong length or any non-hex character.
pub fn decode_array<const N: usize>(text: &[u8], allow_upper: bool) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [hi, lo] => (*hi, *lo),
            _ => return None,
        };
        *o = (nibble(hi, allow_upper)? << 4) | nibble(lo, allow_upper)?;
    }
    Some(out)
}

/// Decodes any even-length hex text (either case) into a new vector; `None` if malformed.
pub fn decode_vec(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((nibble(*hi, true)? << 4) | nibble(*lo, true)?),
            _ => None,
        })
        .collect()
}
