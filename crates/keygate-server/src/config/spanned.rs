//! A value with the byte range it came from in the file, for line-numbered errors.
//!
//! `toml::Spanned` fails on tables that a file only creates implicitly: with
//! `[profile.ws.close.revoked]` and no `[profile.ws]` header, `profile.ws` has no span, and
//! `toml::Spanned` then refuses the table with a message about borrowed strings. This wrapper asks
//! for toml's span the same way and, where toml has none, reads the value without one, so every
//! valid TOML spelling of a table is accepted; errors about such a table carry no line number.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The names toml's deserializer answers to when a span is asked for (`serde_spanned`'s
/// protocol).
const NAME: &str = "$__serde_spanned_private_Spanned";
const START: &str = "$__serde_spanned_private_start";
const END: &str = "$__serde_spanned_private_end";
const VALUE: &str = "$__serde_spanned_private_value";

/// A deserialized value and where it was in the text; the span is empty when toml knew none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spanned<T> {
    value: T,
    span: Range<usize>,
}

impl<T> Spanned<T> {
    pub(crate) fn get_ref(&self) -> &T {
        &self.value
    }

    /// Byte range in the file; empty (`0..0`) when the value has no place of its own.
    pub(crate) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    #[cfg(test)]
    pub(crate) fn has_span(&self) -> bool {
        !self.span.is_empty()
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(NAME, &[START, END, VALUE], SpannedVisitor(PhantomData))
    }
}

struct SpannedVisitor<T>(PhantomData<T>);

impl<'de, T: DeserializeOwned> Visitor<'de> for SpannedVisitor<T> {
    type Value = Spanned<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            let value = T::deserialize(toml::Value::Table(toml::Table::new()))
                .map_err(de::Error::custom)?;
            return Ok(Spanned { value, span: 0..0 });
        };
        if first == START {
            let start: usize = map.next_value()?;
            expect_key(&mut map, END)?;
            let end: usize = map.next_value()?;
            expect_key(&mut map, VALUE)?;
            let value: T = map.next_value()?;
            return Ok(Spanned {
                value,
                span: start..end,
            });
        }
        // No span: this is the table itself. Read it whole, then as `T`.
        let mut table = toml::Table::new();
        table.insert(first, map.next_value()?);
        while let Some(k) = map.next_key::<String>()? {
            let v: toml::Value = map.next_value()?;
            table.insert(k, v);
        }
        let value = T::deserialize(toml::Value::Table(table)).map_err(de::Error::custom)?;
        Ok(Spanned { value, span: 0..0 })
    }
}

fn expect_key<'de, A: MapAccess<'de>>(map: &mut A, name: &'static str) -> Result<(), A::Error> {
    match map.next_key::<String>()? {
        Some(k) if k == name => Ok(()),
        _ => Err(de::Error::missing_field(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        profile: Profile,
        name: Option<Spanned<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Profile {
        ws: Option<Spanned<Ws>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ws {
        close: std::collections::BTreeMap<String, Close>,
        deadline: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Close {
        code: u16,
    }

    #[test]
    fn explicit_tables_and_scalars_keep_their_span() {
        let text =
            "name = \"x\"\n[profile.ws]\ndeadline = \"1s\"\n[profile.ws.close.a]\ncode = 1\n";
        let o: Outer = toml::from_str(text).unwrap();
        let ws = o.profile.ws.unwrap();
        assert!(ws.has_span());
        assert_eq!(ws.get_ref().close["a"].code, 1);
        assert_eq!(ws.get_ref().deadline.as_deref(), Some("1s"));
        let name = o.name.unwrap();
        assert_eq!(&text[name.span()], "\"x\"");
    }

    #[test]
    fn implicit_tables_are_read_without_a_span() {
        let o: Outer = toml::from_str("[profile.ws.close.a]\ncode = 4001\n").unwrap();
        let ws = o.profile.ws.unwrap();
        assert!(!ws.has_span());
        assert_eq!(ws.get_ref().close["a"].code, 4001);
    }

    #[test]
    fn errors_inside_an_implicit_table_still_name_the_field() {
        let e = toml::from_str::<Outer>("[profile.ws.close.a]\ncode = \"x\"\n").unwrap_err();
        assert!(
            e.to_string().contains("u16") || e.to_string().contains("integer"),
            "{e}"
        );
        let e = toml::from_str::<Outer>("[profile.ws.close.a]\ncod = 1\n").unwrap_err();
        assert!(e.to_string().contains("cod"), "{e}");
    }
}
