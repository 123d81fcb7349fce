//! The bindings generated from `wit/postrider.wit`, and nothing else.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "postrider:plugin/plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "postrider:plugin/message.message": crate::message::MessageView,
    },
});
