//! From feed events to cache documents: the in-memory index of source
//! documents (`index`), the dependency map between outputs and what they
//! read (`deps`), and the engine task that rebuilds exactly the affected
//! outputs and hands them to the cache writer (`engine`).

pub mod deps;
pub mod engine;
pub mod index;
pub mod intern;
