//! "No such image", with the closest names the store has, as `git` suggests commands.

/// Up to five of `names` close enough to `wanted` to be what the user meant, closest first.
pub fn closest<'a>(wanted: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<(usize, &str)> = names
        .into_iter()
        .map(|name| (edit_distance(wanted, name), name))
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .iter()
        .filter(|(d, name)| *d <= wanted.len().max(name.len()) / 2 + 1)
        .take(5)
        .map(|(_, name)| *name)
        .collect()
}

/// "no such image: x; closest names the engine has: a, b", or "(the store has no tagged
/// images)" when it has none at all.
pub fn not_found_message<'a>(wanted: &str, names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let close = closest(wanted, names.iter().copied());
    let mut msg = format!("no such image: {wanted}");
    if !close.is_empty() {
        msg.push_str("; closest names the engine has: ");
        msg.push_str(&close.join(", "));
    } else if names.is_empty() {
        msg.push_str(" (the store has no tagged images)");
    }
    msg
}

/// Levenshtein distance over bytes (names are ASCII).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Is `s` a plausible short image ID (lowercase hex, shorter than a full one)?
pub fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() < 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("alpine:latest", "alpine:latest"), 0);
        assert_eq!(edit_distance("alpin:latest", "alpine:latest"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestions() {
        let names = ["alpine:latest", "alpine:3", "busybox:1", "zzzzzzzzzzzzzz"];
        assert_eq!(
            closest("alpin:latest", names),
            ["alpine:latest", "alpine:3"]
        );
        assert_eq!(
            not_found_message("alpin:latest", names),
            "no such image: alpin:latest; closest names the engine has: alpine:latest, alpine:3"
        );
        assert_eq!(
            not_found_message("x", std::iter::empty()),
            "no such image: x (the store has no tagged images)"
        );
        assert_eq!(
            not_found_message("qqqqqqqqqqqq:1", names),
            "no such image: qqqqqqqqqqqq:1"
        );
    }

    #[test]
    fn hex_prefix_rules() {
        assert!(is_hex_prefix("abc123"));
        assert!(!is_hex_prefix("ABC"));
        assert!(!is_hex_prefix("alpine"));
    }
}
