"""How an experiment run ended: `Engine.outcome` and the `RunOutcome` event carry one of these.

Headless mode maps them to exit codes. Defined here only; no torch.
"""

OUTCOME_FINISHED = "finished"  # run(ctx) returned, or max_steps reached
OUTCOME_STOPPED = "stopped"  # stopped by the operator (emergency stop) or by shutdown; model recovered
OUTCOME_ROLLED_BACK = "rolled_back"  # an automatic emergency procedure stopped it; model recovered
OUTCOME_FAILED = "failed"  # run(ctx) raised; model rolled back
OUTCOME_LOAD_ERROR = "load_error"  # the experiment file could not be used
OUTCOME_MODEL_ERROR = "model_error"  # the model could not be loaded
OUTCOME_POLICY_ERROR = "policy_error"  # a policy file (policy.toml, --policy) is not usable
OUTCOME_UNRECOVERED = "unrecovered"  # a CRITICAL problem the engine could not repair

OUTCOMES = (OUTCOME_FINISHED, OUTCOME_STOPPED, OUTCOME_ROLLED_BACK, OUTCOME_FAILED, OUTCOME_LOAD_ERROR,
            OUTCOME_MODEL_ERROR, OUTCOME_POLICY_ERROR, OUTCOME_UNRECOVERED)
