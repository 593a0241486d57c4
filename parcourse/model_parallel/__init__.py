"""Model parallelism's mechanisms (chapters 3–5): the model itself is split.

* :mod:`.partition` — where to cut a model into pipeline stages;
* :mod:`.pipeline` — the GPipe and 1F1B schedules and the stage that runs them;
* :mod:`.timeline` — the ideal timeline of a schedule; Gantt charts of recorded ones;
* :mod:`.activation_memory` — activation bytes per stage under each schedule (CUDA);
* :mod:`.tensor` — Megatron's column- and row-parallel layers;
* :mod:`.sequence` — sequence parallelism's all-gather / reduce-scatter operators;
* :mod:`.tensor_gpt` — the GPT's blocks split by heads and columns, with or without
  sequence parallelism.

The strategies that train with them are in :mod:`parcourse.training`.
"""
