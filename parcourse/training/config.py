"""What a training run is asked to do, and what it produced (chapter 5).

:class:`TrainConfig` holds every option of ``python -m parcourse train``: field ``x_y`` is
the command-line option ``--x-y``. ``batch_size`` is always the *global* batch B: a
data-parallel strategy with K workers gives each worker B/K samples per step, so every
strategy trains on the same global batches (:func:`parcourse.data.global_batch`) and its
final parameters can be compared key by key with ``strategy="single"`` (chapter 3).
Which strategies take which options is declared by each strategy
(:mod:`parcourse.training.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPTIMIZERS = ("sgd", "adam")
DATASETS = ("digits", "mnist", "text")
ATTENTIONS = ("torch", "triton")
DTYPES = ("float32", "float64")
# The data sets each model trains on; the first is its default.
MODEL_DATASETS = {"simple": ("digits", "mnist"), "complex": ("digits", "mnist"),
                  "gpt": ("text",)}


@dataclass
class TrainConfig:
    """All options of one training run; field ``x_y`` is the command-line ``--x-y``."""

    strategy: str = "single"
    """How to parallelize: a name of :data:`parcourse.training.REGISTRY`."""
    model: str = "simple"
    """The book's model to train (:data:`parcourse.models.MODELS`)."""
    dataset: str | None = None
    """``digits`` (offline, shipped with scikit-learn) or ``mnist`` (downloaded once) for
    the image models, ``text`` (offline, :func:`parcourse.data.text_corpus`) for the GPT;
    None picks the model's own (:data:`MODEL_DATASETS`: digits, or text for gpt)."""
    layers: int = 2
    """GPT: transformer blocks L."""
    width: int = 32
    """GPT: channels d of every position (a multiple of ``heads``)."""
    heads: int = 2
    """GPT: attention heads H, each of width d/H."""
    sequence: int = 32
    """GPT: tokens T per window, the context the model sees."""
    experts: int = 0
    """GPT: experts E of each block's mixture-of-experts MLP (0: the dense MLP;
    :mod:`parcourse.moe`)."""
    top_k: int = 1
    """GPT with ``experts``: the experts k each token is routed to."""
    capacity_factor: float = 1.0
    """GPT with ``experts``: c in each expert's capacity ⌈c·k·T/E⌉ per window."""
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 64
    """The global batch B, split over the workers."""
    lr: float = 0.05
    """Learning rate (positive and finite)."""
    optimizer: str = "sgd"
    """``sgd`` or ``adam``."""
    dtype: str = "float32"
    """Parameters, data, optimizer state and messages: ``float64`` proves every strategy
    equal to ``single`` to 1e-10 on any machine (:mod:`parcourse.compare`)."""
    precision: str = "full"
    """``full`` computes in ``dtype``; ``bf16`` or ``fp16`` computes the products in 16 bits
    with float32 master weights (fp16 with dynamic loss scaling;
    :mod:`parcourse.mixed_precision`)."""
    seed: int = 0
    """Seed of the initial weights and of the batch order."""
    workers: int = 1
    """Number of worker processes K."""
    backend: str = "auto"
    """``auto``, ``gloo`` or ``nccl`` (:func:`parcourse.launch.choose_backend`)."""
    allreduce: str = "ring"
    """Which all-reduce sums the gradients: naive, ring, tree or native."""
    bucket_kb: float = 1024.0
    """Gradient bucket size in KiB."""
    fp16_allreduce: bool = False
    """Send gradients as float16 (Horovod's compression)."""
    accumulation: int = 1
    """Micro-batches per step whose gradients are accumulated (one process)."""
    stages: int = 0
    """Pipeline stages (0: the strategy's default)."""
    tensor: int = 0
    """3-D grid: tensor ranks T per stage (0: the strategy's default, 2); R = K/(P·T)."""
    microbatches: int = 1
    """Micro-batches per step in a pipeline (1: the naive layer split)."""
    chunks: int = 0
    """Interleaved pipeline: model chunks V per stage (0: the strategy's default, 2)."""
    receives: str = "step"
    """Pipelines: when a stage posts its receives: ``step`` (all at the start of the step),
    ``ahead`` (the next one of each direction) or ``needed`` (when it needs the message, the
    slowest; :mod:`parcourse.model_parallel.messages`)."""
    partition: str = "parameters"
    """Where to cut a pipeline: parameters, time, or cut points such as 3 or 2,5."""
    recompute: bool = False
    """Recompute each block's activations in backward instead of keeping them
    (:mod:`parcourse.recompute`)."""
    reshard_after_forward: bool = True
    """FSDP: free each layer's gathered parameters after forward and gather them again in
    backward (``--no-reshard-after-forward`` keeps them: less traffic, more memory)."""
    sequence_parallel: bool = False
    """Tensor parallelism of the GPT: split the LayerNorm and residual activations along
    the sequence too (Korthikanti et al., 2022; :mod:`parcourse.model_parallel.sequence`)."""
    attention: str = "torch"
    """The GPT's attention kernel: ``torch`` (:func:`parcourse.gpt.causal_attention`) or
    ``triton`` (FlashAttention-2, :mod:`parcourse.kernels.flash_attention`)."""
    checkpoint: str | None = None
    """File for checkpoints (:mod:`parcourse.checkpoint`)."""
    checkpoint_every: int = 0
    """Save a checkpoint every N steps (0: never)."""
    resume: bool = False
    """Continue from the checkpoint if it exists."""
    timeout: float = 600.0
    """Stop the workers if they have not finished after this many seconds."""
    quiet: bool = False
    """No progress bar and no summary."""

    def __post_init__(self):
        if self.dataset is None:
            self.dataset = MODEL_DATASETS.get(self.model, DATASETS)[0]


@dataclass
class TrainResult:
    """What a run produced: final parameters (plain key names, on the CPU) and measurements."""

    config: TrainConfig
    state_dict: dict = field(repr=False)
    losses: list = field(repr=False)       # mean loss over the global batch, per step
    seconds: float = 0.0                   # wall time of the training loop
    test_accuracy: float = 0.0
    communication_seconds: float = 0.0     # dp-manual, dp-bucketed: time in all-reduce
    overlap: float = 0.0                   # dp-bucketed: share of it hidden behind backward
    timeline: list = field(default_factory=list, repr=False)  # pipelines: pipeline.Event list
    peak_in_flight: list = field(default_factory=list)       # pipelines: per stage
    messages: list = field(default_factory=list, repr=False)  # pipelines: Events "send"
    # (in isend) and "wait" (in a receive)
    stage_layers: list = field(default_factory=list)  # pipelines: (start, end) of each
    # virtual stage (chunk c of stage s is entry c·P + s; one per stage without chunks)
    step_seconds: list = field(default_factory=list, repr=False)  # rank 0's wall time of
    # each step of this run (strategies that run the common loop), from the previous step's end
    held: list = field(default_factory=list)  # tensor, pipelines, fsdp: each rank's state
    # bytes by kind ("parameters", "gradients", "optimizer state") at the end of the run

    @property
    def samples_per_second(self) -> float:
        return self.config.steps * self.config.batch_size / self.seconds

    @property
    def tokens_per_second(self) -> float:
        """For the GPT: windows per second × tokens per window (its samples are windows)."""
        return self.samples_per_second * self.config.sequence
