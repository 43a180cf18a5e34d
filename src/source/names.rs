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

/// [`not_found_message`] for a store that keeps names in full (`localhost/myapp:1.4`), where
/// users type short ones (`myapp:1.4`): each name is compared with what was typed in full and
/// in the short form `shorten` gives it, and suggested in full.
pub fn not_found_message_shortened<'a>(
    wanted: &str,
    names: impl IntoIterator<Item = &'a str>,
    shorten: impl Fn(&'a str) -> &'a str,
) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let mut scored: Vec<(usize, &str)> = names
        .iter()
        .filter_map(|&name| {
            [name, shorten(name)]
                .into_iter()
                .map(|form| (edit_distance(wanted, form), form))
                .filter(|(d, form)| *d <= wanted.len().max(form.len()) / 2 + 1)
                .map(|(d, _)| d)
                .min()
                .map(|d| (d, name))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    let mut msg = format!("no such image: {wanted}");
    if !scored.is_empty() {
        let close: Vec<&str> = scored.iter().take(5).map(|(_, n)| *n).collect();
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
    fn suggestions_for_full_names() {
        let names = [
            "localhost/myapp:1.4",
            "docker.io/library/alpine:3.19",
            "quay.io/org/tool:2",
        ];
        let shorten = |n: &'static str| {
            n.strip_prefix("localhost/")
                .or_else(|| n.strip_prefix("docker.io/library/"))
                .unwrap_or(n)
        };
        assert_eq!(
            not_found_message_shortened("myap:1.4", names, shorten),
            "no such image: myap:1.4; closest names the engine has: localhost/myapp:1.4"
        );
        assert_eq!(
            not_found_message_shortened("alpin:3.19", names, shorten),
            "no such image: alpin:3.19; closest names the engine has: \
             docker.io/library/alpine:3.19"
        );
        assert_eq!(
            not_found_message_shortened("quay.io/org/tol:2", names, shorten),
            "no such image: quay.io/org/tol:2; closest names the engine has: quay.io/org/tool:2"
        );
        assert_eq!(
            not_found_message_shortened("zzzzzzzz:9", names, shorten),
            "no such image: zzzzzzzz:9"
        );
        assert_eq!(
            not_found_message_shortened("x", std::iter::empty(), shorten),
            "no such image: x (the store has no tagged images)"
        );
    }

    #[test]
    fn hex_prefix_rules() {
        assert!(is_hex_prefix("abc123"));
        assert!(!is_hex_prefix("ABC"));
        assert!(!is_hex_prefix("alpine"));
    }
}
