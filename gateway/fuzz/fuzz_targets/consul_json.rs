//! Any bytes as a Consul health answer body: decoded or refused, never a panic, and
//! never more endpoints than the cap allows.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_gateway::control::consul::decode_health;

fuzz_target!(|data: &[u8]| {
    if let Ok(endpoints) = decode_health(data, 64) {
        assert!(endpoints.len() <= 64);
    }
});
