//! Human-friendly byte sizes on the command line and in configuration: `4096`, `64K`, `64KiB`,
//! `256M`, `1G`, `1T` (binary multiples).

/// Parses a size, naming what is wrong with it.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size (expected a number like 64M or 1G)"
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other if other.starts_with(['.', ',']) => {
            return Err(format!(
                "{text:?} is not a whole number (sizes take no fractions: write 1536M for 1.5G)"
            ));
        }
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?} (use K, M, G or T)"
            ));
        }
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats a byte count for people: `0`, `512B`, `4.0K`, `64.0M`, `1.5G`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(4096), "4.0K");
        assert_eq!(human(3 << 29), "1.5G");
    }

    #[test]
    fn bad_sizes_are_named() {
        assert!(parse_size("").unwrap_err().contains("not a size"));
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.5G").unwrap_err().contains("no fractions"));
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }
}
