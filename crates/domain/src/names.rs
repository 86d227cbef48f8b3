//! Enums whose every variant has one stable name: the name stored, sent and parsed back.

/// A fieldless enum whose every variant has one stable name, defined with `named_enum!`.
pub trait Named: Copy + Eq + 'static {
    /// Every variant, in declaration order.
    const ALL: &'static [Self];

    /// The variant's name.
    fn as_str(self) -> &'static str;

    /// The variant called `name`, if any.
    fn parse(name: &str) -> Option<Self>;
}

/// Defines a fieldless enum whose every variant has one stable name, written after the variant
/// as `Variant => "name"`. The enum's and its variants' attributes (docs, derives, `#[default]`,
/// serde names) are written as usual. Besides the [`Named`] implementation, the enum gets the
/// inherent `ALL` (every variant, in declaration order), `as_str` and `parse`, so callers need
/// no import to use them. Exported: the other crates' named enums (the store's cancel causes,
/// the metrics' label values, the media's file kinds) are declared with it too.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$attr:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$variant_attr:meta])*
                $variant:ident => $text:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$attr])*
        $vis enum $name {
            $(
                $(#[$variant_attr])*
                $variant,
            )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($text),+].len()] = [$(Self::$variant),+];

            /// The variant's name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The variant called `name`, if any.
            pub fn parse(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|value| value.as_str() == name)
            }
        }

        impl $crate::names::Named for $name {
            const ALL: &'static [Self] = &Self::ALL;

            fn as_str(self) -> &'static str {
                Self::as_str(self)
            }

            fn parse(name: &str) -> Option<Self> {
                Self::parse(name)
            }
        }
    };
}

/// Asserts that every value of `T` parses back from its name.
#[cfg(test)]
pub(crate) fn assert_names_round_trip<T: Named + std::fmt::Debug>() {
    for &value in T::ALL {
        assert_eq!(T::parse(value.as_str()), Some(value), "{}", value.as_str());
    }
}

/// Asserts that every value of `T` serializes as its name.
#[cfg(test)]
pub(crate) fn assert_serialized_as_names<T: Named + serde::Serialize>() {
    for &value in T::ALL {
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(json, format!("\"{}\"", value.as_str()));
    }
}
