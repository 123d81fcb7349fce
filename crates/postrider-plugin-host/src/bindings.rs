//! The bindings generated from `wit/postrider.wit`, and nothing else.
//!
//! Some records are re-exported (authentication results); their documentation is the WIT's,
//! where it has any.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "postrider:plugin/plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    // So host structs holding these records (EnvelopeInfo's spf) can be compared in tests.
    additional_derives: [PartialEq, Eq],
    with: {
        "postrider:plugin/message.message": crate::message::MessageView,
    },
});
