use proptest::prelude::*;

use super::*;

fn formats() -> impl Strategy<Value = KeyFormat> {
    prop_oneof![
        Just(KeyFormat::default()),
        Just(KeyFormat::new("sk_", Alphabet::Base62, 32, true).unwrap()),
        Just(KeyFormat::new("op_live_", Alphabet::Base62, 40, true).unwrap()),
        Just(KeyFormat::new("os_live_", Alphabet::Hex, 32, false).unwrap()),
        Just(KeyFormat::new("hx_", Alphabet::Hex, 40, true).unwrap()),
        Just(KeyFormat::new("", Alphabet::Base62, 22, true).unwrap()),
    ]
}

/// A deterministic byte source so proptest can shrink and replay.
fn seeded(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut state = seed | 1;
    move |buf: &mut [u8]| {
        for b in buf {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            *b = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    }
}

proptest! {
    #[test]
    fn the_scanner_pattern_finds_every_key_in_text_and_no_longer_token(
        format in formats(),
        seed in any::<u64>(),
    ) {
        let re = regex::Regex::new(&format.pattern()).unwrap();
        let key = format.generate_with(seeded(seed));
        let text = format!("API_KEY=\"{}\"\nother = 1", key.expose());
        let found: Vec<&str> = re.find_iter(&text).map(|m| m.as_str()).collect();
        prop_assert_eq!(found, vec![key.expose()]);
        let longer = format!("{}a", key.expose());
        prop_assert!(!re.is_match(&longer));
    }

    #[test]
    fn generated_keys_parse(format in formats(), seed in any::<u64>()) {
        let key = format.generate_with(seeded(seed));
        prop_assert_eq!(key.expose().len(), format.key_len());
        prop_assert!(key.expose().starts_with(format.prefix()));
        prop_assert_eq!(format.check(key.expose()), Ok(()));
    }

    #[test]
    fn every_single_character_corruption_is_rejected(
        seed in any::<u64>(),
        position in any::<prop::sample::Index>(),
        replacement in any::<prop::sample::Index>(),
        format in formats().prop_filter("checksum on", KeyFormat::has_checksum),
    ) {
        let key = format.generate_with(seeded(seed));
        let mut bytes = key.expose().as_bytes().to_vec();
        let i = position.index(bytes.len());
        let symbols = format.alphabet().symbols();
        let mut new = symbols[replacement.index(symbols.len())];
        if new == bytes[i] {
            new = symbols[(replacement.index(symbols.len()) + 1) % symbols.len()];
        }
        bytes[i] = new;
        let corrupted = String::from_utf8(bytes).unwrap();
        prop_assert!(format.check(&corrupted).is_err(), "accepted {corrupted}");
    }

    #[test]
    fn arbitrary_strings_never_panic(format in formats(), s in ".{0,80}") {
        let _ = format.check(&s);
    }
}

#[test]
fn checksum_catches_every_position_exhaustively() {
    let format = KeyFormat::default();
    let key = format.generate_with(seeded(7));
    let original = key.expose().as_bytes().to_vec();
    for i in format.prefix().len()..original.len() {
        for &c in format.alphabet().symbols() {
            if c == original[i] {
                continue;
            }
            let mut bytes = original.clone();
            bytes[i] = c;
            let s = String::from_utf8(bytes).unwrap();
            assert!(
                format.check(&s).is_err(),
                "corruption at {i} to {} accepted",
                c as char
            );
        }
    }
}

#[test]
fn rejections_name_the_problem() {
    let f = KeyFormat::new("os_live_", Alphabet::Hex, 32, false).unwrap();
    assert_eq!(
        f.check("sk_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4"),
        Err(KeyFormatError::WrongPrefix {
            expected: "os_live_".into()
        })
    );
    assert_eq!(
        f.check("os_live_a1b2"),
        Err(KeyFormatError::WrongLength {
            expected: 40,
            actual: 12
        })
    );
    assert_eq!(
        f.check("os_live_A1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4"),
        Err(KeyFormatError::BadCharacter {
            alphabet: Alphabet::Hex,
            position: 8
        })
    );
    // The seed document's own example key is well-formed.
    assert_eq!(f.check("os_live_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4"), Ok(()));
    assert_eq!(KeyFormatError::BadChecksum.code(), "bad_checksum");
}

#[test]
fn non_ascii_and_whitespace_are_rejected() {
    let f = KeyFormat::default();
    let key = f.generate_with(seeded(3));
    let with_space = format!("{} ", &key.expose()[..key.expose().len() - 1]);
    assert!(matches!(
        f.check(&with_space),
        Err(KeyFormatError::BadCharacter { .. })
    ));
    let with_umlaut = format!("{}ü", &key.expose()[..key.expose().len() - 2]);
    assert!(f.check(&with_umlaut).is_err());
}

#[test]
fn weak_or_unsafe_formats_are_refused() {
    assert!(matches!(
        KeyFormat::new("sk_", Alphabet::Base62, 21, true),
        Err(FormatConfigError::TooLittleEntropy { .. })
    ));
    assert!(KeyFormat::new("sk_", Alphabet::Base62, 22, true).is_ok());
    assert!(matches!(
        KeyFormat::new("bad prefix", Alphabet::Base62, 30, true),
        Err(FormatConfigError::BadPrefix(_))
    ));
}

#[test]
fn hint_and_debug_hide_the_secret() {
    let f = KeyFormat::new("sk_", Alphabet::Base62, 32, true).unwrap();
    let key = f.generate();
    let hint = f.hint(&key);
    assert!(hint.starts_with("sk_..."));
    assert_eq!(hint.len(), "sk_...".len() + 4);
    let debug = format!("{key:?}");
    assert!(!debug.contains(&key.expose()[3..20]));
}

#[test]
fn os_randomness_gives_distinct_keys() {
    let f = KeyFormat::default();
    let a = f.generate();
    let b = f.generate();
    assert_ne!(a, b);
}

#[test]
fn a_format_without_prefix_checks_every_character_and_names_the_first_bad_one() {
    let f = KeyFormat::new("", Alphabet::Hex, 32, false).unwrap();
    let good = "0123456789abcdef0123456789abcdef";
    assert_eq!(f.check(good), Ok(()));
    for (i, bad) in [(0, b'G'), (17, b'g'), (31, b'\0'), (31, b'F')] {
        let mut k = good.as_bytes().to_vec();
        k[i] = bad;
        let k = String::from_utf8(k).unwrap();
        assert_eq!(
            f.check(&k),
            Err(KeyFormatError::BadCharacter {
                alphabet: Alphabet::Hex,
                position: i
            }),
            "{k:?}"
        );
    }
    // Two bad characters: the first is named.
    assert_eq!(
        f.check("0123456789abcdeX0123456789abcdeY"),
        Err(KeyFormatError::BadCharacter {
            alphabet: Alphabet::Hex,
            position: 15
        })
    );
}
