"""Model parallelism's mechanisms (chapters 3–5): the model itself is split.

* :mod:`.partition` — where to cut a model into pipeline stages; weights two stages hold;
* :mod:`.schedules` — GPipe, 1F1B, interleaved 1F1B and ZB-H1 as lists of passes;
* :mod:`.pipeline` — the stage that runs a schedule and records its timeline;
* :mod:`.messages` — activations and gradients between stages, and when receives are posted;
* :mod:`.zero_bubble` — the backward split into input gradients (B) and weight gradients (W);
* :mod:`.timeline` — ideal and replayed timelines of a schedule; Gantt charts of recorded ones;
* :mod:`.idle_time` — a recorded step's idle time, split into what causes it;
* :mod:`.activation_memory` — activation bytes per stage under each schedule (CUDA);
* :mod:`.tensor` — Megatron's column- and row-parallel layers;
* :mod:`.sequence` — sequence parallelism's all-gather / reduce-scatter operators;
* :mod:`.tensor_gpt` — the GPT's blocks split by heads and columns, with or without
  sequence parallelism.

The strategies that train with them are in :mod:`parcourse.training`.
"""
