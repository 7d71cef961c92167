//! Integration tests against the real local stack (`scripts/stack`): one module per behaviour.
//! They read the stack's endpoints from the environment (`eval "$(scripts/stack env)"`, which
//! `scripts/test` does) and start nothing but the service itself.

mod common;

mod startup;
