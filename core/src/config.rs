//! (config: in progress)
