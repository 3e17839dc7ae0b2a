"""Red teaming: attacks that find a model's failures — GBRT (`gbrt`), PromptAttack (`promptattack`), the
activation-steering attack TA² (`steering`) and SAGE-RT-style taxonomy-driven red-team data (`taxonomy`). Each
method is a library of small functions plus one `…_report` function that runs it and returns a `Findings`,
which the `alignlab redteam` commands write into a run folder."""
