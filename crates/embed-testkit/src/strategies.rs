//! proptest strategies for embedding inputs.

use proptest::prelude::*;

/// One input text: ordinary words, arbitrary unicode, empty, whitespace only, control
/// characters, or very long (beyond any model's token limit).
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]{1,10}( [a-z]{1,10}){0,12}",
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => "[ \t\n\r]{1,8}",
        1 => "[\\x{0}-\\x{1f}\\x{7f}]{1,6}",
        1 => "[\\p{Han}\\p{Arabic}\\p{Cyrillic}☃🙂]{1,20}",
        1 => (1usize..4).prop_map(|k| "lorem ipsum dolor sit amet ".repeat(100 * k)),
    ]
}

/// A request: 0 to `max` texts.
pub fn texts(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..=max)
}
