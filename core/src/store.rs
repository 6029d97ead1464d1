//! (store: in progress)
