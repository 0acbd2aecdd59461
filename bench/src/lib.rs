//! Criterion micro-benchmarks of the dataplane core live in `benches/`;
//! the end-to-end lab benchmark is `heels lab bench`. See docs/benchmarks.md.
