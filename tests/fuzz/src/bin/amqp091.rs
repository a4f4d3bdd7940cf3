//! Fuzz target: see `clacks_fuzz::amqp091`.
fn main() {
    afl::fuzz!(|data: &[u8]| clacks_fuzz::amqp091(data));
}
