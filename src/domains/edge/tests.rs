//! Tests of the edge core.
