//! `topic` routing: keys are words separated by `.`; in a binding key `*` matches exactly one
//! word and `#` zero or more.

/// Bindings as split patterns.
#[derive(Debug, Default)]
pub struct TopicRouter {
    patterns: Vec<(String, Vec<String>, String)>,
}

impl TopicRouter {
    pub(super) fn add(&mut self, queue: &str, key: &str) {
        let words = key.split('.').map(str::to_string).collect();
        self.patterns
            .push((queue.to_string(), words, key.to_string()));
    }

    pub(super) fn remove(&mut self, queue: &str, key: &str) {
        self.patterns.retain(|(q, _, k)| !(q == queue && k == key));
    }

    pub(super) fn route(&self, key: &str, out: &mut Vec<String>) {
        let words: Vec<&str> = key.split('.').collect();
        for (q, pattern, _) in &self.patterns {
            if matches_words(pattern, &words) {
                out.push(q.clone());
            }
        }
    }
}

/// Whether routing key `key` matches binding pattern `pattern`.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let p: Vec<String> = pattern.split('.').map(str::to_string).collect();
    let k: Vec<&str> = key.split('.').collect();
    matches_words(&p, &k)
}

fn matches_words(pattern: &[String], key: &[&str]) -> bool {
    // reachable[j]: the pattern prefix seen so far can match key[..j]. Linear in
    // pattern × key, so hostile patterns of many `#` cannot blow up.
    let mut reachable = vec![false; key.len() + 1];
    reachable[0] = true;
    for word in pattern {
        let mut next = vec![false; key.len() + 1];
        match word.as_str() {
            "#" => {
                let mut any = false;
                for j in 0..=key.len() {
                    any |= reachable[j];
                    next[j] = any;
                }
            }
            w => {
                for j in 0..key.len() {
                    if reachable[j] && (w == "*" || w == key[j]) {
                        next[j + 1] = true;
                    }
                }
            }
        }
        reachable = next;
    }
    reachable[key.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards() {
        assert!(topic_matches("a.*.c", "a.b.c"));
        assert!(!topic_matches("a.*.c", "a.c"));
        assert!(topic_matches("a.#.c", "a.c"));
        assert!(topic_matches("a.#.c", "a.b.x.c"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("*", ""));
        assert!(!topic_matches("*", "a.b"));
        assert!(topic_matches("a.#", "a"));
        assert!(!topic_matches("a.b", "a.b.c"));
    }

    /// A plain recursive matcher as the model.
    fn naive(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| naive(rest, &k[i..])),
            Some((w, rest)) => !k.is_empty() && (*w == "*" || *w == k[0]) && naive(rest, &k[1..]),
        }
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_model(
            p in proptest::collection::vec(prop_oneof!["a", "b", "\\*", "#"], 1..6),
            k in proptest::collection::vec(prop_oneof!["a", "b", "c"], 1..6)) {
            let pat = p.join(".");
            let key = k.join(".");
            let pw: Vec<&str> = pat.split('.').collect();
            let kw: Vec<&str> = key.split('.').collect();
            prop_assert_eq!(topic_matches(&pat, &key), naive(&pw, &kw));
        }
    }
}
