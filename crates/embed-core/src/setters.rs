//! `with_setters!`: the consuming `with_*` setters of the `#[non_exhaustive]` option structs.

/// Consuming setters of an options struct, one per field, each documented at its use: `plain`
/// stores the value, `some` stores `Some(value)`, `text` stores `Some(value.into())`.
macro_rules! with_setters {
    ($ty:ty { $( $kind:ident $method:ident($field:ident: $arg:ty) $doc:literal; )* }) => {
        impl $ty {
            $( with_setters!(@one $kind $method $field ($arg) $doc); )*
        }
    };
    (@one plain $method:ident $field:ident ($arg:ty) $doc:literal) => {
        #[doc = $doc]
        #[must_use]
        pub fn $method(mut self, $field: $arg) -> Self {
            self.$field = $field;
            self
        }
    };
    (@one some $method:ident $field:ident ($arg:ty) $doc:literal) => {
        #[doc = $doc]
        #[must_use]
        pub fn $method(mut self, $field: $arg) -> Self {
            self.$field = Some($field);
            self
        }
    };
    (@one text $method:ident $field:ident ($arg:ty) $doc:literal) => {
        #[doc = $doc]
        #[must_use]
        pub fn $method(mut self, $field: impl Into<String>) -> Self {
            self.$field = Some($field.into());
            self
        }
    };
}
