use super::*;
use bytes::Bytes;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    ts: i64,
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(
            ("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..16)),
            0..3,
        ),
        any::<i64>(),
    )
        .prop_map(|(key, value, headers, ts)| Rec {
            key,
            value,
            headers,
            ts,
        })
}

fn build(recs: &[Rec]) -> Bytes {
    let mut b = BatchBuilder::with_capacity(1024);
    for r in recs {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let before = b.size();
        let predicted = b.record_size(r.key.as_deref(), &r.value, &headers, r.ts);
        assert!(predicted <= BatchBuilder::max_record_size(r.key.as_deref(), &r.value, &headers));
        b.push(r.key.as_deref(), &r.value, &headers, r.ts);
        assert_eq!(b.size() - before, predicted, "record_size predicts push");
    }
    b.finish()
}

fn with_base_offset(batch: &Bytes, base: u64) -> Bytes {
    let mut v = batch.to_vec();
    v[..8].copy_from_slice(&base.to_be_bytes());
    Bytes::from(v)
}

proptest! {
    #[test]
    fn batches_round_trip(recs in proptest::collection::vec(rec(), 1..20), base in 0u64..u64::MAX / 2) {
        let batch = with_base_offset(&build(&recs), base);
        let header = validate(&batch).expect("a built batch validates");
        prop_assert_eq!(header.records() as usize, recs.len());
        prop_assert_eq!(header.last_offset(), base + recs.len() as u64 - 1);
        prop_assert_eq!(header.max_timestamp, recs.iter().map(|r| r.ts).max().unwrap());
        let got: Vec<Record> = RecordIter::new(batch).unwrap().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(got.len(), recs.len());
        for (i, (g, r)) in got.iter().zip(&recs).enumerate() {
            prop_assert_eq!(g.offset, base + i as u64);
            prop_assert_eq!(g.timestamp, r.ts);
            prop_assert_eq!(g.key.as_deref(), r.key.as_deref());
            prop_assert_eq!(&g.value[..], &r.value[..]);
            prop_assert_eq!(g.headers.len(), r.headers.len());
            for (gh, (k, v)) in g.headers.iter().zip(&r.headers) {
                prop_assert_eq!(&gh.key, k);
                prop_assert_eq!(gh.value.as_deref(), Some(v.as_slice()));
            }
        }
    }

    #[test]
    fn any_single_bit_flip_is_rejected(recs in proptest::collection::vec(rec(), 1..5), bit in any::<prop::sample::Index>()) {
        let batch = build(&recs);
        let mut v = batch.to_vec();
        // Flip a bit in the validated region (everything but the base offset and leader epoch,
        // which the CRC deliberately does not cover).
        let covered: Vec<usize> = (8..12).chain(16..v.len()).collect();
        let at = covered[bit.index(covered.len() * 8) / 8];
        v[at] ^= 1 << (bit.index(8));
        prop_assert!(validate(&v).is_err());
    }

    #[test]
    fn the_stored_check_rejects_any_flip_from_the_magic_on(recs in proptest::collection::vec(rec(), 1..5), bit in any::<prop::sample::Index>()) {
        let batch = build(&recs);
        prop_assert!(check_stored(&batch).is_ok());
        let mut v = batch.to_vec();
        let at = 16 + bit.index((v.len() - 16) * 8) / 8;
        v[at] ^= 1 << (bit.index(8));
        prop_assert!(check_stored(&v).is_err(), "flip at byte {} passed", at);
    }

    #[test]
    fn validate_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = validate(&bytes);
        let _ = RecordIter::new(Bytes::from(bytes.clone())).map(|it| it.count());
        let _ = Batches::new(Bytes::from(bytes)).count();
    }

    #[test]
    fn truncation_is_rejected(recs in proptest::collection::vec(rec(), 1..5), cut in any::<prop::sample::Index>()) {
        let batch = build(&recs);
        let n = cut.index(batch.len());
        prop_assert!(validate(&batch[..n]).is_err());
    }
}

/// What a view holds, in the owned form's terms (headers parsed).
type Fields = (
    u64,
    i64,
    Option<Vec<u8>>,
    Vec<u8>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn view_fields(v: &RecordView<'_>) -> Fields {
    (
        v.offset,
        v.timestamp,
        v.key.map(<[u8]>::to_vec),
        v.value.to_vec(),
        v.headers()
            .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
            .collect(),
    )
}

proptest! {
    /// The borrowing iterator yields exactly the records that were built, as the owned
    /// decoder does, and `to_owned` gives the owned decoder's record.
    #[test]
    fn views_yield_what_was_built_and_what_the_owned_decoder_yields(recs in proptest::collection::vec(rec(), 1..20), base in 0u64..u64::MAX / 2) {
        let batch = with_base_offset(&build(&recs), base);
        let valid = ValidBatch::new(batch.clone()).expect("a built batch validates");
        // The one-pass check takes every batch whose timestamp deltas fit 63 bits.
        let base_ts = valid.header().base_timestamp;
        let near = recs.iter().all(|r| (-(1i64 << 62)..1i64 << 62).contains(&r.ts.wrapping_sub(base_ts)));
        prop_assert_eq!(view::well_formed(&batch[HEADER_LEN..], recs.len() as i32), near);
        prop_assert_eq!(valid.len(), recs.len());
        let views: Vec<RecordView<'_>> = valid.records().collect();
        prop_assert_eq!(views.len(), recs.len());
        for (i, (v, r)) in views.iter().zip(&recs).enumerate() {
            let (offset, ts, key, value, headers) = view_fields(v);
            prop_assert_eq!(offset, base + i as u64);
            prop_assert_eq!(ts, r.ts);
            prop_assert_eq!(key, r.key.clone());
            prop_assert_eq!(value, r.value.clone());
            let want: Vec<(String, Option<Vec<u8>>)> =
                r.headers.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            prop_assert_eq!(headers, want);
            prop_assert_eq!(v.header_count(), r.headers.len());
        }
        let owned: Vec<Record> = RecordIter::new(batch).unwrap().collect::<Result<_, _>>().unwrap();
        let converted: Vec<Record> = valid.owned().collect();
        prop_assert_eq!(converted, owned);
    }

    /// Every single-bit flip in the checked region is refused before any record is yielded.
    #[test]
    fn views_refuse_every_flipped_batch(recs in proptest::collection::vec(rec(), 1..5), bit in any::<prop::sample::Index>()) {
        let mut v = build(&recs).to_vec();
        let covered: Vec<usize> = (8..12).chain(16..v.len()).collect();
        let at = covered[bit.index(covered.len() * 8) / 8];
        v[at] ^= 1 << (bit.index(8));
        prop_assert!(ValidBatch::new(Bytes::from(v)).is_err());
    }

    /// A liar's batch (a byte changed, the CRC recomputed) is refused, or, if its layout still
    /// holds, read consistently by both decoders: as many records as it claims, no panic.
    #[test]
    fn a_resealed_corruption_is_refused_or_read_alike(recs in proptest::collection::vec(rec(), 1..5), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut v = build(&recs).to_vec();
        let at = HEADER_LEN + at.index(v.len() - HEADER_LEN);
        v[at] = byte;
        let crc = crc32c::crc32c(&v[CRC_START..]);
        v[17..21].copy_from_slice(&crc.to_be_bytes());
        let bytes = Bytes::from(v);
        match ValidBatch::new(bytes.clone()) {
            Err(_) => prop_assert!(RecordIter::new(bytes).is_err()),
            Ok(valid) => {
                prop_assert_eq!(valid.records().count(), valid.len());
                let owned: Vec<Record> = RecordIter::new(bytes).unwrap().collect::<Result<_, _>>().unwrap();
                prop_assert_eq!(valid.owned().collect::<Vec<_>>(), owned);
            }
        }
    }

    #[test]
    fn views_of_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(valid) = ValidBatch::new(Bytes::from(bytes)) {
            prop_assert_eq!(valid.records().count(), valid.len());
            for r in valid.records() {
                let _ = r.headers().count();
            }
        }
    }
}

#[test]
fn records_with_wrong_count_are_rejected_even_with_a_valid_crc() {
    let one = build(&[Rec {
        key: None,
        value: b"a".to_vec(),
        headers: vec![],
        ts: 1,
    }]);
    let mut v = one.to_vec();
    // Claim two records (and last offset delta 1), then re-seal the CRC as a liar would.
    v[57..61].copy_from_slice(&2i32.to_be_bytes());
    v[23..27].copy_from_slice(&1i32.to_be_bytes());
    let crc = crc32c::crc32c(&v[CRC_START..]);
    v[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(validate(&v), Err(DecodeError::Truncated { .. })));
}

#[test]
fn compressed_batches_validate_and_read_back_with_every_codec() {
    use super::compression::Compression;
    let recs: Vec<Rec> = (0..200)
        .map(|i| Rec {
            key: Some(format!("key-{}", i % 7).into_bytes()),
            value: format!("value number {i}, repeated enough to compress").into_bytes(),
            headers: vec![("h".to_string(), vec![i as u8])],
            ts: 1_700_000_000_000 + i,
        })
        .collect();
    let plain = build(&recs);
    let want: Vec<Record> = RecordIter::new(plain.clone())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for codec in Compression::ALL.into_iter().skip(1) {
        let packed = Bytes::from(compressed(&plain, codec).unwrap());
        assert!(packed.len() < plain.len(), "{codec:?}");
        let header = validate(&packed).unwrap();
        assert_eq!(header.compression(), codec.id());
        assert_eq!(header.records(), 200);
        let got: Vec<Record> = RecordIter::new(packed.clone())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, want, "{codec:?}: RecordIter");
        let valid = super::ValidBatch::new(packed.clone()).unwrap();
        assert_eq!(
            valid.owned().collect::<Vec<_>>(),
            want,
            "{codec:?}: ValidBatch"
        );
        assert_eq!(valid.bytes(), &packed, "the batch stays as sent");
        assert!(compressed(&packed, codec).is_err(), "not twice");
        // The compressed stream cut short, length and CRC made to match: refused.
        let mut bad = packed.to_vec();
        bad.truncate(bad.len() - 20);
        let len = (bad.len() - LOG_OVERHEAD) as u32;
        bad[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&bad[CRC_START..]);
        bad[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(validate(&bad).is_err(), "{codec:?}: damaged stream");
    }
    // Attribute codes 5-7 are not codecs.
    let mut v = plain.to_vec();
    v[22] |= 5;
    let crc = crc32c::crc32c(&v[CRC_START..]);
    v[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(validate(&v), Err(DecodeError::Compression(5))));
}

#[test]
fn batches_splits_back_to_back_batches_and_keeps_partial_tail() {
    let a = build(&[Rec {
        key: None,
        value: b"a".to_vec(),
        headers: vec![],
        ts: 1,
    }]);
    let b = build(&[Rec {
        key: Some(b"k".to_vec()),
        value: b"bb".to_vec(),
        headers: vec![],
        ts: 2,
    }]);
    let mut all = a.to_vec();
    all.extend_from_slice(&b);
    all.extend_from_slice(&a[..20]);
    let mut it = Batches::new(Bytes::from(all));
    assert_eq!(it.next().as_deref(), Some(&a[..]));
    assert_eq!(it.next().as_deref(), Some(&b[..]));
    assert_eq!(it.next(), None);
    assert_eq!(it.rest(), 20);
}

#[test]
fn matches_a_batch_encoded_by_kafka_layout_rules() {
    // A one-record batch, key "k", value "v", timestamp 1000, laid out by hand from the
    // RecordBatch v2 specification; the builder must produce exactly these bytes.
    let mut expect: Vec<u8> = Vec::new();
    let record: Vec<u8> = vec![
        0, // attributes
        0, // timestamp delta 0
        0, // offset delta 0
        2, b'k', // key length 1 (zig-zag 2)
        2, b'v', // value length 1
        0,    // no headers
    ];
    let mut records = vec![(record.len() as u8) * 2];
    records.extend_from_slice(&record);
    expect.extend_from_slice(&0u64.to_be_bytes());
    expect.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as u32).to_be_bytes());
    expect.extend_from_slice(&(-1i32).to_be_bytes());
    expect.push(2);
    expect.extend_from_slice(&[0; 4]);
    expect.extend_from_slice(&0i16.to_be_bytes());
    expect.extend_from_slice(&0i32.to_be_bytes());
    expect.extend_from_slice(&1000i64.to_be_bytes());
    expect.extend_from_slice(&1000i64.to_be_bytes());
    expect.extend_from_slice(&(-1i64).to_be_bytes());
    expect.extend_from_slice(&(-1i16).to_be_bytes());
    expect.extend_from_slice(&(-1i32).to_be_bytes());
    expect.extend_from_slice(&1i32.to_be_bytes());
    expect.extend_from_slice(&records);
    let crc = crc32c::crc32c(&expect[CRC_START..]);
    expect[17..21].copy_from_slice(&crc.to_be_bytes());

    let mut b = BatchBuilder::with_capacity(64);
    b.push(Some(b"k"), b"v", &[], 1000);
    assert_eq!(&b.finish()[..], &expect[..]);
}

proptest! {
    /// The producer id, epoch and base sequence a builder is given are what the header reads
    /// back, under the CRC; a batch without them reads as not idempotent (-1).
    #[test]
    fn producer_fields_round_trip(id in 0i64.., epoch in 0i16.., seq in 0i32.., n in 1usize..20) {
        let mut b = BatchBuilder::with_capacity(1024);
        b.set_producer(Producer { id, epoch, base_sequence: seq });
        for i in 0..n {
            b.push(None, format!("v{i}").as_bytes(), &[], 1);
        }
        let bytes = b.finish();
        let h = validate(&bytes).unwrap();
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (id, epoch, seq));
        let mut plain = BatchBuilder::with_capacity(64);
        plain.push(None, b"x", &[], 1);
        let h = validate(&plain.finish()).unwrap();
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (-1, -1, -1));
    }

    /// Sealing an unsealed batch, or renumbering a sealed one, gives a valid batch with
    /// exactly the new producer fields and the records unchanged.
    #[test]
    fn sealing_sets_the_producer_fields_under_a_valid_crc(id in 0i64.., epoch in 0i16.., seq in 0i32.., n in 1usize..20) {
        let build = || {
            let mut b = BatchBuilder::with_capacity(1024);
            for i in 0..n {
                b.push(None, format!("v{i}").as_bytes(), &[], 1);
            }
            b
        };
        let plain = build().finish();
        let mut unsealed = build().finish_unsealed();
        prop_assert!(validate(&unsealed).is_err() || n == 0, "no CRC yet");
        seal(&mut unsealed, Producer { id, epoch, base_sequence: seq });
        let h = validate(&unsealed).unwrap();
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (id, epoch, seq));
        prop_assert_eq!(&unsealed[61..], &plain[61..]);
        let mut renumbered = unsealed.clone();
        seal(&mut renumbered, Producer { id, epoch: epoch.wrapping_add(1), base_sequence: 0 });
        let h = validate(&renumbered).unwrap();
        prop_assert_eq!((h.producer_epoch, h.base_sequence), (epoch.wrapping_add(1), 0));
    }
}

/// Three batches of five records at offsets 0, 5 and 10, back to back as a fetch returns them.
fn three_batches() -> (Bytes, [usize; 3]) {
    let mut all = Vec::new();
    let mut sizes = [0; 3];
    for (i, size) in sizes.iter_mut().enumerate() {
        let mut b = BatchBuilder::with_capacity(256);
        for r in 0..5 {
            b.push(None, format!("{i}-{r}").as_bytes(), &[], 0);
        }
        let batch = with_base_offset(&b.finish(), i as u64 * 5);
        *size = batch.len();
        all.extend_from_slice(&batch);
    }
    (Bytes::from(all), sizes)
}

#[test]
fn a_record_cap_keeps_whole_batches_and_always_the_first() {
    let (all, [a, b, _]) = three_batches();
    let len = |from, cap| take_records(all.clone(), from, cap).len();
    assert_eq!(len(0, 1), a, "the first batch comes whole");
    assert_eq!(len(0, 9), a, "a second batch would pass the cap");
    assert_eq!(len(0, 10), a + b);
    assert_eq!(
        len(3, 7),
        a + b,
        "records before the fetch offset do not count"
    );
    assert_eq!(len(3, 6), a);
    assert_eq!(len(0, 100), all.len());
    assert_eq!(take_records(Bytes::new(), 0, 5), Bytes::new());
    // A damaged header stops the counting, not the bytes: the reader names the damage.
    let mut broken = all.to_vec();
    broken[a + 16] ^= 0xff;
    let broken = Bytes::from(broken);
    assert!(take_records(broken.clone(), 0, 1).len() >= a);
}
