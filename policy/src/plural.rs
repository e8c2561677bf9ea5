//! Counts in words: `1 key`, `2 keys`, `3 key classes`; the one way
//! keyward's messages, reports and tables write a count and its noun.

/// `n` and `noun`, the noun's last word in the plural unless `n` is 1:
/// `1 application`, `0 applications`, `3 key classes`, `2 policies`.
pub fn plural(n: impl TryInto<u64>, noun: &str) -> String {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        return format!("1 {noun}");
    }
    let plural = if noun.ends_with('s')
        || noun.ends_with('x')
        || noun.ends_with("ch")
        || noun.ends_with("sh")
    {
        format!("{noun}es")
    } else if let Some(stem) = noun
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'o', 'u']))
    {
        format!("{stem}ies")
    } else {
        format!("{noun}s")
    };
    format!("{n} {plural}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_words() {
        assert_eq!(plural(1u32, "application"), "1 application");
        assert_eq!(plural(2u32, "application"), "2 applications");
        assert_eq!(plural(0u32, "application"), "0 applications");
        assert_eq!(plural(1u32, "key class"), "1 key class");
        assert_eq!(plural(3u32, "key class"), "3 key classes");
        assert_eq!(plural(2u32, "policy"), "2 policies");
        assert_eq!(plural(2u32, "key"), "2 keys");
        assert_eq!(plural(2u32, "day"), "2 days");
        assert_eq!(plural(5usize, "record"), "5 records");
        assert_eq!(plural(1usize, "match"), "1 match");
        assert_eq!(plural(4usize, "match"), "4 matches");
        assert_eq!(plural(u64::MAX, "use"), format!("{} uses", u64::MAX));
        assert_eq!(plural(-1i64, "use"), format!("{} uses", u64::MAX));
    }
}
