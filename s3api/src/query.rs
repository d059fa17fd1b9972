//! Reading a URL query string the way S3 does: a `+` in a name or value stands for a space (the
//! form encoding browsers, JavaScript's `URLSearchParams` and many shell tools use), and `%XX`
//! for the byte it names. A literal plus arrives as `%2B`.

use percent_encoding::percent_decode;

/// The bytes a query string's name or value stands for.
pub fn decode_bytes(text: &str) -> Vec<u8> {
    if !text.contains('+') {
        return percent_decode(text.as_bytes()).collect();
    }
    let spaced: Vec<u8> = text
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&spaced).collect()
}

/// A query string's name or value as text (invalid UTF-8 replaced).
pub fn decode(text: &str) -> String {
    String::from_utf8_lossy(&decode_bytes(text)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plus_is_a_space_and_an_encoded_plus_is_a_plus() {
        assert_eq!(decode("my+dir/"), "my dir/");
        assert_eq!(decode("a%2Bb"), "a+b");
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("caf%C3%A9"), "café");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode_bytes("%FF+"), vec![0xFF, b' ']);
    }
}
