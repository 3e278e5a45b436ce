//! Core benchmarks: the offline key format check and the digest, the two steps every request
//! pays before the replica lookup. Run: `cargo bench -p keygate-core`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keygate_core::{Alphabet, Digester, KeyFormat};

/// A deterministic byte source, so every run checks the same keys.
fn seeded(mut state: u64) -> impl FnMut(&mut [u8]) {
    move |buf: &mut [u8]| {
        for b in buf {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *b = (state >> 33) as u8;
        }
    }
}

fn key_format(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_format");
    group.throughput(Throughput::Elements(1));
    let format = KeyFormat::default();
    let key = format.generate_with(seeded(1));
    let key = key.expose().to_owned();
    group.bench_function("check_valid", |b| {
        b.iter(|| black_box(format.check(black_box(&key))))
    });
    // One changed character: caught by the checksum, the most expensive refusal.
    let mut typo = key.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap_or_default();
    group.bench_function("check_bad_checksum", |b| {
        b.iter(|| black_box(format.check(black_box(&typo))))
    });
    group.bench_function("check_wrong_prefix", |b| {
        b.iter(|| black_box(format.check(black_box("xx_not_a_key"))))
    });
    // The peers' key shape (32 hex characters, no prefix, no checksum), as in bench/gateway.sh.
    let hex = KeyFormat::new("", Alphabet::Hex, 32, false).expect("a valid format");
    let hex_key = hex.generate_with(seeded(2)).expose().to_owned();
    group.bench_function("check_hex32_no_checksum", |b| {
        b.iter(|| black_box(hex.check(black_box(&hex_key))))
    });
    group.finish();
}

fn digest(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Elements(1));
    let key = KeyFormat::default().generate_with(seeded(3));
    let key = key.expose().to_owned();
    let plain = Digester::plain();
    group.bench_function("sha256", |b| {
        b.iter(|| black_box(plain.digest(black_box(&key))))
    });
    let keyed = Digester::keyed(b"a server secret of some length");
    group.bench_function("hmac_sha256", |b| {
        b.iter(|| black_box(keyed.digest(black_box(&key))))
    });
    group.finish();
}

criterion_group!(benches, key_format, digest);
criterion_main!(benches);
