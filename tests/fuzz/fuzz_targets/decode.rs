//! The decoder on arbitrary bytes, as a value of each input topic: a
//! validated event or a rejection, never a panic; an accepted event has a
//! plausible time and an id within the contract's bounds; and the same event,
//! or a rejection for the same reason, as the serde_json baseline
//! (`gmv::decode::baseline`) gives.
#![no_main]

use gmv::core::fx::{default_rates, FxTable};
use gmv::decode::{baseline, decode};
use gmv::model::InputTopic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fx = FxTable::new(&default_rates());
    for topic in InputTopic::ALL {
        let got = decode(topic, data, &fx);
        if let Ok(ev) = &got {
            assert!(ev.ts_ms() >= 0);
            assert!(!ev.order_id().is_empty() && ev.order_id().len() <= 64);
        }
        let want = baseline::decode(topic, data, &fx);
        assert_eq!(
            got.as_ref().map_err(|r| r.reason),
            want.as_ref().map_err(|r| r.reason),
            "{topic:?}: {:?} against serde_json's {:?}",
            got.as_ref().err(),
            want.as_ref().err()
        );
    }
});
