//! Kubernetes label selectors: validating and matching `LabelSelector`s exactly as the API server
//! does, and parsing the kubectl string syntax (`a=b,c!=d,e in (x,y),!f`) used by CLI flags.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// A label selector that is invalid or could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A matchExpressions operator other than `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[error(
        "label selector requirement on key {key:?} has unknown operator {operator:?}; use one of \
         In, NotIn, Exists, DoesNotExist (case-sensitive)"
    )]
    InvalidOperator {
        /// The requirement's label key.
        key: String,
        /// The operator as written.
        operator: String,
    },
    /// `In` or `NotIn` with no values.
    #[error(
        "label selector requirement on key {key:?} with operator {operator} has no values; \
         give at least one value"
    )]
    ValuesRequired {
        /// The requirement's label key.
        key: String,
        /// The operator (`In` or `NotIn`).
        operator: String,
    },
    /// `Exists` or `DoesNotExist` with values.
    #[error(
        "label selector requirement on key {key:?} with operator {operator} has values; \
         remove the values (the operator only checks whether the label is present)"
    )]
    ValuesNotAllowed {
        /// The requirement's label key.
        key: String,
        /// The operator (`Exists` or `DoesNotExist`).
        operator: String,
    },
    /// A label key that is not a Kubernetes qualified name.
    #[error(
        "invalid label key {key:?} in label selector: use an optional DNS-subdomain prefix and \
         '/', then a name of at most 63 characters of [A-Za-z0-9-_.] that starts and ends with \
         a letter or digit"
    )]
    InvalidKey {
        /// The rejected key.
        key: String,
    },
    /// A label value that Kubernetes would not accept.
    #[error(
        "invalid value {value:?} for label key {key:?} in label selector: use at most 63 \
         characters of [A-Za-z0-9-_.] that start and end with a letter or digit, or nothing"
    )]
    InvalidValue {
        /// The key the value belongs to.
        key: String,
        /// The rejected value.
        value: String,
    },
    /// The kubectl-style selector string is malformed.
    #[error(
        "cannot parse label selector {selector:?} at byte {at}: expected {expected} \
         (syntax: a=b,c!=d,e in (x,y),f notin (z),g,!h)"
    )]
    Syntax {
        /// The whole selector string.
        selector: String,
        /// Byte offset of the problem.
        at: usize,
        /// What the parser was looking for there.
        expected: &'static str,
    },
}

const IN: &str = "In";
const NOT_IN: &str = "NotIn";
const EXISTS: &str = "Exists";
const DOES_NOT_EXIST: &str = "DoesNotExist";

/// Checks a selector the way the API server does: operators, value arity, key and value syntax.
pub fn validate_selector(selector: &LabelSelector) -> Result<(), SelectorError> {
    for (key, value) in selector.match_labels.iter().flatten() {
        validate_key(key)?;
        validate_value(key, value)?;
    }
    for req in selector.match_expressions.iter().flatten() {
        validate_key(&req.key)?;
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            IN | NOT_IN if values.is_empty() => {
                return Err(SelectorError::ValuesRequired {
                    key: req.key.clone(),
                    operator: req.operator.clone(),
                });
            }
            IN | NOT_IN => {
                for value in values {
                    validate_value(&req.key, value)?;
                }
            }
            EXISTS | DOES_NOT_EXIST if !values.is_empty() => {
                return Err(SelectorError::ValuesNotAllowed {
                    key: req.key.clone(),
                    operator: req.operator.clone(),
                });
            }
            EXISTS | DOES_NOT_EXIST => {}
            _ => {
                return Err(SelectorError::InvalidOperator {
                    key: req.key.clone(),
                    operator: req.operator.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Whether `labels` satisfy `selector`; an empty selector matches everything.
///
/// The selector is validated first, so an invalid one is an error rather than a silent mismatch.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    validate_selector(selector)?;
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_match = selector
        .match_expressions
        .iter()
        .flatten()
        .all(|req| requirement_matches(req, labels));
    Ok(labels_match && expressions_match)
}

/// Matches one already-validated requirement.
fn requirement_matches(req: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let label = labels.get(&req.key);
    match req.operator.as_str() {
        IN => label.is_some_and(|l| values.contains(l)),
        NOT_IN => label.is_none_or(|l| !values.contains(l)),
        EXISTS => label.is_some(),
        DOES_NOT_EXIST => label.is_none(),
        _ => false,
    }
}

/// A Kubernetes qualified name: `[prefix/]name`, prefix a DNS-1123 subdomain.
fn validate_key(key: &str) -> Result<(), SelectorError> {
    let invalid = || SelectorError::InvalidKey {
        key: key.to_owned(),
    };
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err(invalid());
            }
            name
        }
        None => key,
    };
    if name.is_empty() || !is_label_value(name) {
        return Err(invalid());
    }
    Ok(())
}

fn validate_value(key: &str, value: &str) -> Result<(), SelectorError> {
    if is_label_value(value) {
        Ok(())
    } else {
        Err(SelectorError::InvalidValue {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Empty, or ≤63 chars of `[A-Za-z0-9-_.]` starting and ending alphanumeric.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (None, _) | (_, None) => true,
        (Some(first), Some(last)) => {
            b.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
    }
}

/// DNS-1123 subdomain: ≤253 chars, dot-separated lower-case labels of `[a-z0-9-]`.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(first), Some(last)) => {
                    b.len() <= 63
                        && (first.is_ascii_lowercase() || first.is_ascii_digit())
                        && (last.is_ascii_lowercase() || last.is_ascii_digit())
                        && b.iter()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                }
                _ => false,
            }
        })
}

/// Parses the kubectl selector syntax (`a=b,c==d,e!=f,g in (x,y),h notin (z),i,!j`).
///
/// `=`/`==` become `matchLabels` (or a one-value `In` when the key is already there), `!=` a
/// one-value `NotIn`. The empty string is the empty selector, which matches everything. The
/// result is validated.
pub fn parse_selector(s: &str) -> Result<LabelSelector, SelectorError> {
    let mut parser = Parser { src: s, pos: 0 };
    let mut match_labels = BTreeMap::new();
    let mut match_expressions = Vec::new();
    if !s.trim().is_empty() {
        loop {
            parser.requirement(&mut match_labels, &mut match_expressions)?;
            match parser.next_token()? {
                None => break,
                Some((_, Token::Comma)) => {}
                Some((at, _)) => return Err(parser.syntax(at, "',' or end of selector")),
            }
        }
    }
    let selector = LabelSelector {
        match_labels: (!match_labels.is_empty()).then_some(match_labels),
        match_expressions: (!match_expressions.is_empty()).then_some(match_expressions),
    };
    validate_selector(&selector)?;
    Ok(selector)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Ident(&'a str),
    Comma,
    Bang,
    NotEquals,
    Equals,
    OpenParen,
    CloseParen,
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn syntax(&self, at: usize, expected: &'static str) -> SelectorError {
        SelectorError::Syntax {
            selector: self.src.to_owned(),
            at,
            expected,
        }
    }

    /// Next token and its byte offset, or `None` at the end.
    fn next_token(&mut self) -> Result<Option<(usize, Token<'a>)>, SelectorError> {
        let rest = &self.src[self.pos..];
        let trimmed = rest.trim_start();
        self.pos += rest.len() - trimmed.len();
        let start = self.pos;
        let mut chars = trimmed.chars();
        let Some(c) = chars.next() else {
            return Ok(None);
        };
        let (token, len) = match c {
            ',' => (Token::Comma, 1),
            '(' => (Token::OpenParen, 1),
            ')' => (Token::CloseParen, 1),
            '!' if trimmed.starts_with("!=") => (Token::NotEquals, 2),
            '!' => (Token::Bang, 1),
            '=' if trimmed.starts_with("==") => (Token::Equals, 2),
            '=' => (Token::Equals, 1),
            // Set-based `>`/`<` exist only for node selectors, not label selectors.
            '<' | '>' => return Err(self.syntax(start, "a label key, operator or value")),
            _ => {
                let len = trimmed
                    .find(|c: char| c.is_whitespace() || ",()!=<>".contains(c))
                    .unwrap_or(trimmed.len());
                (Token::Ident(&trimmed[..len]), len)
            }
        };
        self.pos += len;
        Ok(Some((start, token)))
    }

    fn peek_token(&mut self) -> Result<Option<(usize, Token<'a>)>, SelectorError> {
        let saved = self.pos;
        let token = self.next_token();
        self.pos = saved;
        token
    }

    fn ident(&mut self, expected: &'static str) -> Result<&'a str, SelectorError> {
        match self.next_token()? {
            Some((_, Token::Ident(s))) => Ok(s),
            Some((at, _)) => Err(self.syntax(at, expected)),
            None => Err(self.syntax(self.src.len(), expected)),
        }
    }

    /// A value after `=`/`!=`; empty when the requirement ends right there (`a=`).
    fn single_value(&mut self) -> Result<String, SelectorError> {
        match self.peek_token()? {
            None | Some((_, Token::Comma)) => Ok(String::new()),
            _ => self.ident("a label value").map(str::to_owned),
        }
    }

    /// `( v1, v2, ... )`; empty entries (`(a,)`) are empty values, as in Kubernetes.
    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next_token()? {
            Some((_, Token::OpenParen)) => {}
            Some((at, _)) => return Err(self.syntax(at, "'(' starting the value set")),
            None => return Err(self.syntax(self.src.len(), "'(' starting the value set")),
        }
        let mut values = Vec::new();
        if let Some((_, Token::CloseParen)) = self.peek_token()? {
            self.next_token()?;
            return Ok(values);
        }
        loop {
            match self.next_token()? {
                Some((_, Token::Ident(v))) => {
                    values.push(v.to_owned());
                    match self.next_token()? {
                        Some((_, Token::Comma)) => {}
                        Some((_, Token::CloseParen)) => return Ok(values),
                        Some((at, _)) => return Err(self.syntax(at, "',' or ')'")),
                        None => return Err(self.syntax(self.src.len(), "',' or ')'")),
                    }
                }
                Some((_, Token::Comma)) => values.push(String::new()),
                Some((_, Token::CloseParen)) => {
                    values.push(String::new());
                    return Ok(values);
                }
                Some((at, _)) => return Err(self.syntax(at, "a label value, ',' or ')'")),
                None => return Err(self.syntax(self.src.len(), "a label value, ',' or ')'")),
            }
        }
    }

    fn requirement(
        &mut self,
        match_labels: &mut BTreeMap<String, String>,
        match_expressions: &mut Vec<LabelSelectorRequirement>,
    ) -> Result<(), SelectorError> {
        let expr =
            |key: &str, operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values,
            };
        let key = match self.next_token()? {
            Some((_, Token::Bang)) => {
                let key = self.ident("a label key after '!'")?;
                match_expressions.push(expr(key, DOES_NOT_EXIST, None));
                return Ok(());
            }
            Some((_, Token::Ident(key))) => key,
            Some((at, _)) => return Err(self.syntax(at, "a label key or '!'")),
            None => return Err(self.syntax(self.src.len(), "a label key or '!'")),
        };
        match self.peek_token()? {
            None | Some((_, Token::Comma)) => {
                match_expressions.push(expr(key, EXISTS, None));
            }
            Some((_, Token::Equals)) => {
                self.next_token()?;
                let value = self.single_value()?;
                match match_labels.get(key) {
                    None => {
                        match_labels.insert(key.to_owned(), value);
                    }
                    Some(existing) if *existing == value => {}
                    // `a=x,a=y` must match nothing, which a map cannot express.
                    Some(_) => match_expressions.push(expr(key, IN, Some(vec![value]))),
                }
            }
            Some((_, Token::NotEquals)) => {
                self.next_token()?;
                let value = self.single_value()?;
                match_expressions.push(expr(key, NOT_IN, Some(vec![value])));
            }
            Some((_, Token::Ident("in"))) => {
                self.next_token()?;
                let values = self.value_set()?;
                match_expressions.push(expr(key, IN, Some(values)));
            }
            Some((_, Token::Ident("notin"))) => {
                self.next_token()?;
                let values = self.value_set()?;
                match_expressions.push(expr(key, NOT_IN, Some(values)));
            }
            Some((at, _)) => {
                return Err(self.syntax(at, "'=', '==', '!=', 'in', 'notin', ',' or end"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn exprs(reqs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(reqs),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let empty = LabelSelector::default();
        assert!(selector_matches(&empty, &labels(&[])).unwrap());
        assert!(selector_matches(&empty, &labels(&[("a", "b")])).unwrap());
        let empty_collections = LabelSelector {
            match_labels: Some(BTreeMap::new()),
            match_expressions: Some(Vec::new()),
        };
        assert!(selector_matches(&empty_collections, &labels(&[("a", "b")])).unwrap());
    }

    #[test]
    fn operators_match_as_kubernetes() {
        let host = labels(&[("rack", "r1"), ("tier", "gpu")]);
        let cases: &[(LabelSelectorRequirement, bool)] = &[
            (req("rack", "In", &["r1", "r2"]), true),
            (req("rack", "In", &["r2"]), false),
            (req("zone", "In", &["z1"]), false), // absent label never matches In
            (req("rack", "NotIn", &["r2"]), true),
            (req("rack", "NotIn", &["r1", "r2"]), false),
            (req("zone", "NotIn", &["z1"]), true), // absent label matches NotIn
            (req("rack", "Exists", &[]), true),
            (req("zone", "Exists", &[]), false),
            (req("rack", "DoesNotExist", &[]), false),
            (req("zone", "DoesNotExist", &[]), true),
        ];
        for (r, want) in cases {
            let got = selector_matches(&exprs(vec![r.clone()]), &host).unwrap();
            assert_eq!(got, *want, "{r:?}");
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let host = labels(&[("rack", "r1"), ("tier", "gpu")]);
        let mut selector = LabelSelector {
            match_labels: Some(labels(&[("rack", "r1"), ("tier", "gpu")])),
            match_expressions: Some(vec![req("zone", "DoesNotExist", &[])]),
        };
        assert!(selector_matches(&selector, &host).unwrap());
        selector.match_labels = Some(labels(&[("rack", "r1"), ("tier", "cpu")]));
        assert!(!selector_matches(&selector, &host).unwrap());
        selector.match_labels = Some(labels(&[("rack", "r1"), ("zone", "z")]));
        assert!(!selector_matches(&selector, &host).unwrap());
        selector.match_labels = None;
        selector.match_expressions = Some(vec![
            req("rack", "In", &["r1"]),
            req("tier", "NotIn", &["gpu"]),
        ]);
        assert!(!selector_matches(&selector, &host).unwrap());
    }

    #[test]
    fn empty_values_slice_counts_as_no_values() {
        let r = LabelSelectorRequirement {
            key: "a".into(),
            operator: "Exists".into(),
            values: Some(Vec::new()),
        };
        assert!(selector_matches(&exprs(vec![r]), &labels(&[("a", "")])).unwrap());
    }

    #[test]
    fn invalid_selectors_are_errors_naming_key_and_operator() {
        let cases: Vec<(LabelSelector, SelectorError)> = vec![
            (
                exprs(vec![req("rack", "in", &["r1"])]),
                SelectorError::InvalidOperator {
                    key: "rack".into(),
                    operator: "in".into(),
                },
            ),
            (
                exprs(vec![req("rack", "Gt", &["1"])]),
                SelectorError::InvalidOperator {
                    key: "rack".into(),
                    operator: "Gt".into(),
                },
            ),
            (
                exprs(vec![req("rack", "In", &[])]),
                SelectorError::ValuesRequired {
                    key: "rack".into(),
                    operator: "In".into(),
                },
            ),
            (
                exprs(vec![req("rack", "NotIn", &[])]),
                SelectorError::ValuesRequired {
                    key: "rack".into(),
                    operator: "NotIn".into(),
                },
            ),
            (
                exprs(vec![req("rack", "Exists", &["r1"])]),
                SelectorError::ValuesNotAllowed {
                    key: "rack".into(),
                    operator: "Exists".into(),
                },
            ),
            (
                exprs(vec![req("rack", "DoesNotExist", &["r1"])]),
                SelectorError::ValuesNotAllowed {
                    key: "rack".into(),
                    operator: "DoesNotExist".into(),
                },
            ),
            (
                exprs(vec![req("-rack", "Exists", &[])]),
                SelectorError::InvalidKey {
                    key: "-rack".into(),
                },
            ),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("Example.com/rack", "r1")])),
                    match_expressions: None,
                },
                SelectorError::InvalidKey {
                    key: "Example.com/rack".into(),
                },
            ),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("rack", "r 1")])),
                    match_expressions: None,
                },
                SelectorError::InvalidValue {
                    key: "rack".into(),
                    value: "r 1".into(),
                },
            ),
        ];
        for (selector, want) in cases {
            assert_eq!(validate_selector(&selector), Err(want.clone()));
            assert_eq!(selector_matches(&selector, &labels(&[])), Err(want));
        }
        let msg = validate_selector(&exprs(vec![req("rack", "in", &["r1"])]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"rack\"") && msg.contains("\"in\""), "{msg}");
    }

    #[test]
    fn keys_and_values_follow_kubernetes_syntax() {
        for key in ["a", "metal3.io/role", "x/y", "A_b.c-D", &"k".repeat(63)] {
            assert_eq!(validate_key(key), Ok(()), "{key}");
        }
        for key in [
            "",
            "/a",
            "a/",
            "a/b/c",
            "_a",
            "a_",
            &"k".repeat(64),
            "UP.io/a",
        ] {
            assert!(validate_key(key).is_err(), "{key}");
        }
        for value in ["", "v", "v-1.2_3", &"v".repeat(63)] {
            assert!(is_label_value(value), "{value}");
        }
        for value in ["-v", "v.", "v/1", &"v".repeat(64)] {
            assert!(!is_label_value(value), "{value}");
        }
    }

    #[test]
    fn parses_kubectl_syntax() {
        let s = parse_selector("a=b,c!=d,e in (x,y),f notin (z),g,!h,i==j").unwrap();
        assert_eq!(s.match_labels, Some(labels(&[("a", "b"), ("i", "j")])));
        assert_eq!(
            s.match_expressions,
            Some(vec![
                req("c", "NotIn", &["d"]),
                req("e", "In", &["x", "y"]),
                req("f", "NotIn", &["z"]),
                req("g", "Exists", &[]),
                req("h", "DoesNotExist", &[]),
            ])
        );
    }

    #[test]
    fn parse_table() {
        let host = labels(&[("rack", "r1"), ("tier", "gpu"), ("metal3.io/role", "")]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("   ", true),
            ("rack=r1", true),
            ("rack==r1", true),
            ("rack = r1 , tier = gpu", true),
            ("rack=r2", false),
            ("rack!=r2", true),
            ("rack!=r1", false),
            ("zone!=z", true),
            ("rack in (r1, r2)", true),
            ("rack in(r2)", false),
            ("zone in (z)", false),
            ("rack notin (r1)", false),
            ("zone notin (z)", true),
            ("rack", true),
            ("zone", false),
            ("!zone", true),
            ("!rack", false),
            ("metal3.io/role=", true),
            ("metal3.io/role in (x,)", true), // trailing comma is an empty value
            ("rack=r1,rack=r2", false),       // conflicting equalities match nothing
            ("rack=r1,rack=r1", true),
        ];
        for (input, want) in cases {
            let selector = parse_selector(input).unwrap();
            assert_eq!(
                selector_matches(&selector, &host).unwrap(),
                *want,
                "{input:?}"
            );
        }
    }

    #[test]
    fn parse_errors() {
        let syntax = [
            ("a=b,", 4),
            (",a", 0),
            ("a b", 2),
            ("a=b c", 4),
            ("a in x", 5),
            ("a in (x", 7),
            ("a in (x y)", 8),
            ("a notin", 7),
            ("!", 1),
            ("a>1", 1),
            ("a=(", 2),
            ("a in (x)(", 8),
        ];
        for (input, at) in syntax {
            match parse_selector(input) {
                Err(SelectorError::Syntax {
                    selector, at: got, ..
                }) => {
                    assert_eq!(selector, input);
                    assert_eq!(got, at, "{input:?}");
                }
                other => panic!("{input:?}: expected syntax error, got {other:?}"),
            }
        }
        assert_eq!(
            parse_selector("a in ()"),
            Err(SelectorError::ValuesRequired {
                key: "a".into(),
                operator: "In".into(),
            })
        );
        assert_eq!(
            parse_selector("a=b c d=e").map_err(|e| e.to_string().contains("a=b c d=e")),
            Err(true)
        );
        assert_eq!(
            parse_selector("-a=b"),
            Err(SelectorError::InvalidKey { key: "-a".into() })
        );
        assert_eq!(
            parse_selector("a=b/c"),
            Err(SelectorError::InvalidValue {
                key: "a".into(),
                value: "b/c".into(),
            })
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse_selector(&s);
        }

        #[test]
        fn parse_never_panics_on_selector_like_text(s in "[a-c =!,()innot]{0,24}") {
            let _ = parse_selector(&s);
        }
    }
}
