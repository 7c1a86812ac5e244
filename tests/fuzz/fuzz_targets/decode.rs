//! The decoder on arbitrary bytes, as a value of each input topic: a
//! validated event or a rejection, never a panic; an accepted event has a
//! plausible time and an id within the contract's bounds.
#![no_main]

use gmv::core::fx::{default_rates, FxTable};
use gmv::decode::decode;
use gmv::model::InputTopic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fx = FxTable::new(&default_rates());
    for topic in InputTopic::ALL {
        if let Ok(ev) = decode(topic, data, &fx) {
            assert!(ev.ts_ms() >= 0);
            assert!(!ev.order_id().is_empty() && ev.order_id().len() <= 64);
        }
    }
});
