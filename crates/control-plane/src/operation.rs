//! The operation vocabulary: kinds, states and steps as enums. Strings exist
//! only at the edges (the operations table's text columns, JSON).

use tenantry_core::wire_enum;

wire_enum!(
    /// What an operation does. Each kind is implemented once (see `runner.rs`).
    OperationKind {
        Provision => "provision",
        Retire => "retire",
        Promote => "promote",
        Move => "move",
        Demote => "demote",
        Erase => "erase",
        Adopt => "adopt",
        Revert => "revert",
    }
);

wire_enum!(
    /// Where an operation is in its life.
    ///
    /// ```text
    ///   pending --claim--> running --step ... step--> succeeded
    ///      |                 |   \--failure (policy: retry, roll back, or forward only)--> failed
    ///      +--cancel--+------+
    ///                 v
    ///            cancelling --rollback--> cancelled
    /// ```
    OperationState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelling => "cancelling",
        Cancelled => "cancelled",
    }
);

impl OperationState {
    /// Succeeded, failed or cancelled: nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(self, OperationState::Succeeded | OperationState::Failed | OperationState::Cancelled)
    }
}

wire_enum!(
    /// Every step of every kind. A kind lists its own, in order.
    Step {
        // provision (and the first steps of a promotion)
        CreateDatabase => "create_database",
        CreateInstance => "create_instance",
        WaitAvailable => "wait_available",
        Bootstrap => "bootstrap",
        RegisterBackend => "register_backend",
        Place => "place",
        // moves
        Preflight => "preflight",
        Subscribe => "subscribe",
        Copy => "copy",
        CatchUp => "catch_up",
        Cutover => "cutover",
        Cleanup => "cleanup",
        Verify => "verify",
        ReleaseSource => "release_source",
        // retirement of a backend
        Drain => "drain",
        Destroy => "destroy",
        MarkRetired => "mark_retired",
        // erasure
        EraseData => "erase_data",
        Tombstone => "tombstone",
        // revert of an adoption
        FenceTenant => "fence_tenant",
        ApplyBack => "apply_back",
        Unplace => "unplace",
        // every kind's end
        Done => "done",
    }
);
