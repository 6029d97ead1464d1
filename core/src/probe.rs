//! (probe: in progress)
