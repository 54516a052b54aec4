"""The crash classifier's knowledge, kept as data so a new failure family is one row, not a new branch.

``RULES`` is tried in order, most specific first: the first rule that matches any exception of the
failure (root cause first) or any line of its output wins.  Order encodes precedence between families
whose messages overlap (an OOM reported as a cuBLAS error is memory; a ``size mismatch`` while loading a
state dict is a checkpoint problem, not a model bug), so each rule says in ``reason`` why it exists.

Precedence, top to bottom: resource exhaustion (fds, any out-of-memory, disk full) whatever component it
happened in; device, driver and communication-library failures (CUDA, cuDNN, cuBLAS, NCCL) over the user's
frame; scheduler termination; checkpoint and configuration families; then the component and phase of the
deepest frame that is not a wrapper's (a Lightning/Trainer/DDP frame never decides), read from frames, not
from the user's source line.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMORY, DEVICE, NETWORK, SYSTEM = "memory", "device", "network", "system"
DATA, MODEL, LOSS, GRAD = "data_loading", "model_inference", "loss_computation", "gradient_computation"
OPTIM, CKPT, VALID, CONFIG, UNKNOWN = "optimization", "checkpoint", "validation", "configuration", "unknown"
# The seed's vocabularies, in its order (compat.types exposes them as its ErrorCategory/TrainingPhase enums).
CATEGORIES = (DATA, MODEL, LOSS, GRAD, OPTIM, MEMORY, DEVICE, CKPT, VALID, CONFIG, NETWORK, SYSTEM, UNKNOWN)
PHASES = ("initialization", "data_loading", "model_setup", "training_start", "epoch_start", "batch_start",
          "forward_pass", "loss_computation", "backward_pass", "optimization_step", "batch_end", "epoch_end",
          "validation", "checkpoint_saving", "training_end", "error_recovery")

# A restart may help with these (by convention): the cause lies outside the program's own logic.  A rule
# overrides its category's verdict with ``Rule.transient``; ``restartable`` gives the answer.
TRANSIENT = frozenset({MEMORY, NETWORK, DEVICE, SYSTEM})

# A generic exception (TypeError, KeyError, ...) belongs to the part of the loop it was raised in.
PHASE_CATEGORY = {
    "data_loading": DATA, "forward_pass": MODEL, "loss_computation": LOSS, "backward_pass": GRAD,
    "optimization_step": OPTIM, "validation": VALID, "checkpoint_saving": CKPT,
    "initialization": CONFIG, "model_setup": CONFIG,
}
PHASE_ALIASES = {
    "data": "data_loading", "dataloading": "data_loading", "forward": "forward_pass", "loss": "loss_computation",
    "backward": "backward_pass", "optimizer_step": "optimization_step", "optimization": "optimization_step",
    "optimizer": "optimization_step", "eval": "validation", "evaluation": "validation", "val": "validation",
    "checkpoint": "checkpoint_saving", "checkpointing": "checkpoint_saving", "setup": "initialization",
    "init": "initialization",
}
PHASE_WORDS = {
    "data_loading": "in data loading", "forward_pass": "in forward", "loss_computation": "in the loss",
    "backward_pass": "in backward", "optimization_step": "in the optimizer step", "validation": "in validation",
    "checkpoint_saving": "while checkpointing", "initialization": "during initialization",
    "model_setup": "during model setup",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One failure family.  ``message`` is searched in each exception's "Type: message" text (and in every
    output line when no exception says what it was, e.g. a traceback cut off before its last line); ``line``
    in every output line; ``types`` restricts to exception class names; ``frames`` must match one frame,
    ``site`` the deepest user frame and ``innermost`` the deepest frame of all, each as "file|func|source".
    ``transient`` is the rule's restart verdict where it differs from its category's (a CUDA OOM at a fixed
    batch size recurs, although memory is transient by default).  ``by_phase`` lets the phase decide the
    category (a shape error inside a collate function is a data problem); ``facts`` are (template, regex)
    pairs that pull numbers into the cause."""

    name: str
    category: str
    summary: str
    reason: str
    message: str = ""
    line: str = ""
    types: tuple[str, ...] = ()
    frames: str = ""
    site: str = ""
    innermost: str = ""
    phase: str | None = None
    by_phase: bool = False
    transient: bool | None = None
    remedy: str = ""
    facts: tuple[tuple[str, str], ...] = ()


_SIZE = r"([\d.]+ ?[KMGTP]?i?B)"
_MP_FRAMES = r"multiprocessing/|torch/utils/data/|popen_spawn|resource_sharer"
_IPC_FRAMES = r"multiprocessing/(?:connection|queues|reduction|resource_sharer)|popen_spawn|resource_sharer"
_OPTIM_FRAMES = (r"torch/optim/|bitsandbytes/optim/|deepspeed/ops/adam|apex/optimizers/|"
                 r"transformers/optimization\.py|torch/amp/grad_scaler\.py|torch/cuda/amp/grad_scaler\.py")
_NET_TYPES = (
    "ConnectionError", "ConnectionResetError", "ConnectionRefusedError", "ConnectionAbortedError", "TimeoutError",
    "URLError", "HTTPError", "SSLError", "SSLCertVerificationError", "MaxRetryError", "NewConnectionError",
    "ReadTimeout", "ConnectTimeout", "ReadTimeoutError", "ConnectTimeoutError", "ProxyError", "RemoteDisconnected",
    "ChunkedEncodingError", "IncompleteRead", "gaierror", "herror", "timeout", "ContentTooShortError",
    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "LocalEntryNotFoundError",
    "OfflineModeIsEnabled", "HfHubHTTPError", "CommError",
)

RULES: tuple[Rule, ...] = (
    # ---- memory: exhaustion surfaces through many layers (cuBLAS, workers, numpy), so it is tried first
    Rule("fd_limit", SYSTEM, "too many open files",
         transient=False,
         remedy="raise the limit (ulimit -n 65536) or call torch.multiprocessing.set_sharing_strategy('file_system')",
         reason="the fd limit (ulimit -n) or the file_descriptor sharing strategy is exhausted; a restart hits "
                "the same limit until it is raised",
         message=r"Too many open files|\[Errno 24\]|EMFILE|received \d+ items of ancdata"),
    Rule("dataloader_worker_killed", MEMORY, "DataLoader worker killed", phase="data_loading",
         remedy="give the workers more RAM or /dev/shm (docker --shm-size), or lower num_workers",
         reason="a worker killed by SIGKILL/SIGBUS is the OOM killer or a full /dev/shm; restart with fewer "
                "workers or more shared memory",
         message=r"DataLoader worker \(pids?\(?s?\)? ?[\d, ]+\) is killed by signal: (?:Killed|Bus error)",
         facts=(("by signal: {}", r"killed by signal: (Killed|Bus error)"),)),
    Rule("cuda_oom", MEMORY, "CUDA out of memory",
         transient=False,
         reason="the allocator could not get device memory; at a fixed batch size it recurs on every restart "
                "(NVRx and DLRover do not retry it blindly); the numbers say how far off the batch is",
         message=r"(?:CUDA|HIP|XPU|NPU|MPS backend) out of memory|OutOfMemoryError|CUDA error: out of memory|"
                 r"cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|"
                 r"RESOURCE_EXHAUSTED|ResourceExhaustedError|NCCL.*out of memory|"
                 r"Unable to find a valid cuDNN algorithm",
         facts=(("tried to allocate {}", r"(?i)tried to allocate " + _SIZE),
                ("{} free", _SIZE + r" (?:is )?free"), ("{} total", _SIZE + r" total capacity"),
                ("{} total", r"total capacity of " + _SIZE))),
    Rule("shared_memory", MEMORY, "shared memory (/dev/shm) exhausted", phase="data_loading",
         remedy="enlarge /dev/shm (docker --shm-size=8g) or lower num_workers",
         reason="DataLoader workers pass batches through /dev/shm; a small shm (Docker default 64 MB) kills them",
         message=r"(?i)shared memory|/dev/shm|unable to write to file </torch_|unable to (?:open|mmap|"
                 r"resize) shared|Couldn't open shared file mapping|shm_open|torch_shm_manager",
         line=r"Unexpected bus error encountered in worker|insufficient shared memory"),
    Rule("disk_full", SYSTEM, "disk full or quota exceeded",
         transient=False,
         remedy="free space or point checkpoints/logs at a bigger volume (df -h), then resume",
         reason="ENOSPC/EDQUOT (often mid-checkpoint: 'unexpected pos') clears only when space is freed, "
                "so a restart is not worth it until then",
         message=r"No space left on device|\[Errno 28\]|ENOSPC|Disk quota exceeded|\[Errno 122\]|EDQUOT|"
                 r"inline_container\.cc.*unexpected pos|PytorchStreamWriter failed writing"),
    Rule("cpu_alloc", MEMORY, "host memory exhausted",
         remedy="lower the batch size or num_workers, or raise the host/cgroup memory limit",
         reason="CPU allocators report ENOMEM in their own words; the host or cgroup is out of RAM",
         message=r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)|std::bad_alloc|"
                 r"Cannot allocate memory|\[Errno 12\]|paging file is too small|WinError 1455|"
                 r"failed to allocate \d+ bytes",
         facts=(("tried to allocate {bytes}", r"(?:you )?tried to allocate (\d+) bytes"),)),
    Rule("numpy_oom", MEMORY, "numpy could not allocate an array",
         transient=False,
         reason="numpy raises its own MemoryError subclass with the requested size and shape",
         types=("_ArrayMemoryError", "ArrayMemoryError"),
         message=r"Unable to allocate [\d.]+ \w+ for an array",
         facts=(("{} requested", r"Unable to allocate ([\d.]+ \w+)"), ("shape {}", r"with shape (\([^)]*\))"))),
    Rule("python_memoryerror", MEMORY, "Python ran out of memory (MemoryError)",
         reason="a bare MemoryError means the interpreter's allocation failed: host RAM or the cgroup limit",
         types=("MemoryError",)),
    Rule("oom_killer_log", MEMORY, "killed by the kernel OOM killer",
         reason="schedulers and the kernel log OOM kills as plain lines, not exceptions",
         line=r"(?i)out of memory: kill(?:ed)? process|oom[-_]kill|out-of-memory handler|OOMKilled|"
              r"memory cgroup out of memory"),
    Rule("sigkill_log", MEMORY, "killed by SIGKILL, probably the OOM killer",
         reason="a training process killed by SIGKILL with no other error is almost always out of host RAM",
         line=r"Signal 9 \(SIGKILL\) received|exitcode\s*:\s*-9\b|^\s*Killed\s*$|\bKilled\s+(?:python|torchrun|"
              r"accelerate|deepspeed)|exit(?:ed with)? code 137\b|exitcode 137\b"),
    # ---- device: CUDA runtime and placement problems; a kernel assert that names its cause goes first
    Rule("loss_device_assert", LOSS, "device-side assert in the loss: a target or input is out of range",
         reason="the kernel assertion line names the loss kernel, which is the actionable cause, not the GPU",
         line=r"t >= 0 && t < n_classes|cur_target >= 0 && cur_target < n_classes|ClassNLLCriterion|"
              r"input_val >= zero && input_val <= one|nll_loss\w*kernel.*Assertion"),
    Rule("index_device_assert", MODEL, "device-side assert: an index is out of range (embedding/vocab size?)",
         reason="indexSelect/IndexKernel asserts are token ids beyond the embedding table, a model/data mismatch",
         line=r"srcIndex < srcSelectDimSize|indexSelect\w*Kernel.*Assertion|index out of bounds\"? failed"),
    Rule("cuda_unavailable", DEVICE, "no usable CUDA device",
         remedy="run on a node with a working GPU and driver, or select the CPU device",
         reason="the job landed where CUDA is missing or broken; another node or a driver fix helps, not code",
         message=r"No CUDA GPUs are available|Found no NVIDIA driver|no CUDA-capable device|"
                 r"Torch not compiled with CUDA enabled|_cuda_setDevice|_cuda_init|_cuda_getDeviceCount|"
                 r"CUDA driver version is insufficient|NVIDIA driver on your system is too old|"
                 r"invalid device ordinal|CUDA unknown error|is_available\(\) is False|"
                 r"no kernel image is available|not compatible with the current PyTorch|CUDA initialization|"
                 r"cudaGetDeviceCount|Cannot re-initialize CUDA in forked subprocess|nvmlInit|GPU is lost|"
                 r"ECC error|NVIDIA-SMI has failed|Cannot access accelerator device when none is available|"
                 r"Need to provide pin_memory allocator|no accelerator is found"),
    Rule("device_mismatch", DEVICE, "tensors on different devices",
         transient=False,
         remedy="move the model and every input/target to one device (.to(device)) before the call",
         reason="model, inputs or targets live on different devices; a .to(device) is missing",
         message=r"Expected all tensors to be on the same device|(?:to be|is|are) on the same device|"
                 r"Expected object of device type|expected device \S+ but got device|device type for generator|"
                 r"Input type \((?:torch\.)?(?:[A-Z]\w*Tensor|CPU\w*)\) and weight type \((?:torch\.cuda|CUDA)|"
                 r"Input type \((?:torch\.cuda|CUDA)[^)]*\) and weight type \((?:torch\.)?(?:[A-Z]\w*Tensor|CPU)|"
                 r"is on CPU, but expected (?:it )?to be on GPU|not at the same device|Tensors must be CUDA|"
                 r"Placeholder storage has not been allocated on MPS|can't convert cuda:?\d* device type tensor"),
    Rule("nccl_cuda_error", DEVICE, "NCCL hit a CUDA error",
         reason="NCCL reports CUDA failures as its own errors; the GPU, not the network, failed",
         message=r"unhandled cuda error|ncclUnhandledCudaError"),
    Rule("cuda_error", DEVICE, "CUDA error",
         reason="asynchronous CUDA/cuDNN/cuBLAS failures with no visible cause are treated as device faults",
         message=r"CUDA error|CUDA kernel errors|device-side assert|cudaError|CUBLAS_STATUS|cuBLAS|CUDNN_STATUS|"
                 r"(?i:cudnn error)|illegal memory access|misaligned address|unspecified launch failure|"
                 r"HIP error|CUFFT_|CUSOLVER|Triton Error \[CUDA\]|CUDA driver error"),
    # ---- network: collectives, rendezvous, sockets, HTTP
    Rule("job_terminated", SYSTEM, "terminated by the scheduler or a signal",
         remedy="resume from the last checkpoint; request a longer time limit or handle SIGTERM by saving",
         reason="time limits, preemption and SIGTERM end a run from outside; resuming is the fix",
         types=("KeyboardInterrupt", "SignalException"),
         message=r"Received \d+ death signal|Process \d+ got signal: (?:15|1|2)\b",
         line=r"DUE TO TIME LIMIT|CANCELLED AT|DUE TO (?:PREEMPTION|JOB REQUEUE)|PREEMPTED|NODE_FAIL|"
              r"Signal 15 \(SIGTERM\)|received signal 15|^\s*Terminated\s*$|Received (?:15|1|2) death signal|"
              r"job is preempted|Caught signal SIG(?:TERM|USR[12])"),
    # ---- checkpoint by location: an error inside torch.load/torch.save frames or naming a weights file
    Rule("nccl_misuse", CONFIG, "invalid NCCL setup (two ranks on one GPU?)",
         reason="duplicate GPUs mean LOCAL_RANK/set_device is wrong; retrying cannot fix it",
         message=r"Duplicate GPU detected|ncclInvalidUsage"),
    Rule("collective_failure", NETWORK, "collective communication failed or timed out",
         remedy="look for the rank that stopped first (a crash or a straggler); raise the timeout only if it "
                "is slow, not dead",
         reason="a collective that times out or loses a peer is the interconnect or a straggling rank",
         message=r"collective operation timeout|ProcessGroupNCCL|DistBackendError|NCCL error|ncclSystemError|"
                 r"ncclRemoteError|ncclInternalError|NCCL communicator|[Gg]loo|Connection closed by peer|"
                 r"barrier\(\) timed out|monitoredBarrier",
         facts=(("op {}", r"OpType=(\w+)"), ("timeout {} ms", r"Timeout\(ms\)=(\d+)")),
         line=r"Watchdog caught collective operation timeout|NCCL error in: |unhandled system error|"
              r"ProcessGroupNCCL.*(?:[Tt]imeout|timed out)|"
              r"NCCL WARN .*(?:[Cc]onnection|[Ss]ocket|[Tt]imeout|NET/)"),
    Rule("launcher_env", CONFIG, "distributed launcher environment missing",
         reason="RANK/WORLD_SIZE/MASTER_ADDR unset means the script was not started by torchrun/srun",
         message=r"environment variable \w+ expected, but not set|Default process group has not been initialized|"
                 r"Distributed package doesn't have NCCL|'(?:LOCAL_RANK|RANK|WORLD_SIZE|MASTER_ADDR|"
                 r"MASTER_PORT|LOCAL_WORLD_SIZE)'"),
    Rule("rendezvous", NETWORK, "rendezvous/store connection failed",
         remedy="check MASTER_ADDR/MASTER_PORT are reachable from every node and the port is free",
         reason="the c10d store or rendezvous is reachable only over the network",
         message=r"TCPStore|DistNetworkError|DistStoreError|Rendezvous\w*Error|client socket has timed out|"
                 r"Socket Timeout|store->get|Address already in use|EADDRINUSE|"
                 r"[Tt]imed out initializing process group|wait timeout after"),
    Rule("dataloader_worker_crashed", SYSTEM, "a DataLoader worker crashed (native)", phase="data_loading",
         remedy="a native crash in a worker (a decoder or extension): reproduce with num_workers=0 under "
                "python -X faulthandler",
         reason="a worker killed by SIGSEGV/SIGABRT/SIGILL is a native crash; it explains the broken pipes and "
                "EOFErrors chained below it, which are symptoms",
         message=r"DataLoader worker \(pids?\(?s?\)? ?[\d, ]+\) is killed by signal: (?!Killed|Bus error)",
         line=r"Unexpected (?:segmentation fault|floating-point exception|illegal instruction|abort\w*) "
              r"encountered in worker",
         facts=(("by signal: {}", r"killed by signal: ([\w ]+)"),)),
    Rule("worker_connection", DATA, "lost the connection to a DataLoader worker (a worker died)",
         reason="socket errors inside multiprocessing frames are DataLoader IPC, not the network",
         types=("ConnectionResetError", "ConnectionRefusedError", "BrokenPipeError", "EOFError"),
         frames=_IPC_FRAMES),
    Rule("hub_config", CONFIG, "model/repository name or access token is wrong",
         reason="an unknown or gated Hub repository fails the same way on every retry",
         message=r"is not a valid model identifier|Repository Not Found|RepositoryNotFoundError|GatedRepoError|"
                 r"gated repo|Access to model .* is restricted|401 Client Error|Invalid user token"),
    Rule("socket_http", NETWORK, "network error",
         reason="DNS, TCP, TLS and HTTP failures (downloads, hubs, loggers) usually pass on retry",
         types=_NET_TYPES,
         message=r"(?i)name or service not known|temporary failure in name resolution|nodename nor servname|"
                 r"getaddrinfo failed|network is unreachable|no route to host|connection (?:refused|reset|"
                 r"timed out|aborted)|\[Errno (?:101|104|110|111|113|-2|-3)\]|couldn't connect to|"
                 r"outgoing traffic has been disabled|HF_HUB_OFFLINE|CERTIFICATE_VERIFY_FAILED|\bSSL: |"
                 r"Max retries exceeded|read timed out|HTTP Error \d{3}|urlopen error|\b50[234] Server Error"),
    # ---- checkpoint: (de)serialisation; before shape rules since state-dict errors mention sizes
    Rule("ckpt_gpu_to_cpu", DEVICE, "checkpoint saved on GPU loaded where CUDA is unavailable",
         transient=False,
         reason="torch.load needs a GPU or map_location; on a GPU node the same job works",
         message=r"Attempting to deserialize object on (?:a )?CUDA device"),
    Rule("state_dict_mismatch", CKPT, "checkpoint does not match the model",
         remedy="load with the model the checkpoint was saved from; strip a 'module.' prefix from DDP "
                "checkpoints; strict=False only for keys you mean to drop",
         reason="missing/unexpected keys or shape mismatches come from the checkpoint, not the forward pass",
         message=r"Error\(s\) in loading state_dict|Missing key\(s\) in state_dict|"
                 r"Unexpected key\(s\) in state_dict|size mismatch for \S+: copying a param|"
                 r"While copying the parameter named|loaded state dict (?:contains a parameter group|"
                 r"has a different number of parameter groups)",
         facts=(("keys carry a 'module.' prefix (saved from DataParallel/DDP)", r"(\"module\.)"),)),
    Rule("ckpt_corrupt", CKPT, "checkpoint file unreadable",
         remedy="re-download or re-save the checkpoint; torch.load(weights_only=False) only for files you trust",
         reason="a truncated download, a weights_only refusal or a foreign format fails on every load",
         message=r"PytorchStreamReader|central directory|invalid header or archive is corrupted|"
                 r"Weights only load failed|weights_only|UnpicklingError|invalid load key|SafetensorError|"
                 r"HeaderTooLarge|Ran out of input|MetadataIncompleteBuffer|storage has wrong (?:byte )?size|"
                 r"Can't get attribute .* on <module"),
    Rule("pickle_in_workers", DATA, "DataLoader workers cannot pickle the dataset",
         reason="spawned workers pickle the dataset; lambdas/local objects or a missing __main__ guard fail",
         message=r"(?i)pickl|An attempt has been made to start a new process before", frames=_MP_FRAMES),
    Rule("pickle_save", CKPT, "object cannot be pickled for saving",
         reason="torch.save of a whole model pickles code objects; save the state_dict instead",
         message=r"(?i)can'?t pickle|cannot pickle|PicklingError|Can't get local object"),
    # ---- system resources: before checkpoint/data rules because ENOSPC or EACCES while saving is the OS
    Rule("permission", SYSTEM, "permission denied",
         transient=False,
         remedy="fix the permissions or write to a directory the job owns",
         reason="file-system permissions or a read-only mount are an environment problem, not the code's",
         types=("PermissionError",),
         message=r"Permission denied|\[Errno 13\]|Read-only file system|\[Errno 30\]|Operation not permitted"),
    Rule("io_error", SYSTEM, "I/O error on the file system",
         reason="EIO/stale NFS handles/dead FUSE mounts are storage faults that may clear on retry",
         message=r"Input/output error|\[Errno 5\]|Stale file handle|\[Errno 116\]|"
                 r"Transport endpoint is not connected|\[Errno 107\]"),
    Rule("native_crash", SYSTEM, "native crash",
         reason="segfaults/aborts in extensions are environment or binary problems; faulthandler shows where",
         message=r"Segmentation fault|SIGSEGV|Fatal Python error|SIGBUS|Bus error|Illegal instruction|SIGILL|"
                 r"Floating point exception|SIGFPE|SIGABRT|core dumped",
         line=r"Fatal Python error:|Segmentation fault|core dumped|^\s*Bus error\s*$|Illegal instruction|"
              r"Floating point exception|received signal SIG(?:SEGV|BUS|ILL|FPE|ABRT)"),
    Rule("ckpt_file_missing", CKPT, "checkpoint file not found",
         reason="a missing weights file is a path/resume problem, not a data problem",
         message=r"^(?:\w+\.)*(?:FileNotFoundError|OSError|IsADirectoryError): .*\.(?:pt|pth|ckpt|bin|"
                 r"safetensors|pkl|pickle|h5|tar|npz|pdparams)['\"]|does not appear to have a file named|"
                 r"Parent directory .* does not exist"),
    Rule("ckpt_frames", CKPT, "checkpoint load/save failed",
         reason="any failure inside torch.load/torch.save or a checkpoint helper belongs to checkpointing",
         types=("RuntimeError", "EOFError", "OSError", "FileNotFoundError", "BadZipFile", "KeyError",
                "ValueError", "AttributeError", "TypeError"),
         frames=r"torch/serialization\.py|safetensors|torch\.(?:load|save)\(|\|(?:save|load)_(?:checkpoint|"
                r"ckpt)\|"),
    # ---- configuration: bad values reach libraries, so these precede the model/loss/optimizer rules
    Rule("argparse", CONFIG, "invalid command-line arguments",
         reason="argparse/click reject the command line before training starts",
         line=r"\S+: error: (?:unrecognized arguments|argument |the following arguments are required|"
              r"invalid choice|ambiguous option|one of the arguments)|^Error: (?:No such option|"
              r"Invalid value for|Missing (?:option|argument)|Got unexpected extra argument)"),
    Rule("config_lib", CONFIG, "invalid configuration",
         reason="Hydra/OmegaConf/YAML/TOML errors are configuration by construction",
         types=("ConfigAttributeError", "ConfigKeyError", "MissingMandatoryValue", "ConfigCompositionException",
                "OverrideParseException", "InterpolationResolutionError", "ScannerError", "ParserError",
                "ComposerError", "ConstructorError", "TOMLDecodeError", "InstantiationException"),
         message=r"Could not override '|Key '[^']+' is not in struct|hydra\.errors"),
    Rule("config_json", CONFIG, "the configuration file does not parse",
         reason="JSON carries data as often as settings: a decode error is configuration when the user's line that "
                "read it names a config",
         types=("JSONDecodeError",),
         site=r"(?i)\b\w*(?:cfg|config|conf|settings|hparams|hyperparams)\w*\b"),
    Rule("config_file_missing", CONFIG, "configuration file not found",
         reason="a missing YAML/TOML/INI file is a launch-argument mistake",
         message=r"^(?:\w+\.)*FileNotFoundError: .*\.(?:ya?ml|toml|ini|cfg|conf)['\"]"),
    Rule("config_value_type", CONFIG, "a config value has the wrong type (a number read as a string?) or is out of "
                                      "range",
         reason="YAML reads '3e-4' as a string; the library raises, but the value comes from the config",
         message=r"not supported between instances of '(?:float|int)' and 'str'|"
                 r"not supported between instances of 'str' and '(?:float|int)'|Invalid (?:learning rate|lr|"
                 r"weight_decay value|beta parameter|epsilon value|momentum value|dampening value|rho value|"
                 r"lr_decay value)|must be real number, not str|'str' object cannot be interpreted as an integer|"
                 r"batch_size should be a positive integer"),
    Rule("registry_lookup", CONFIG, "unknown name in the configuration",
         reason="a name not found in a registry of models/optimizers/datasets is a typo or unsupported option",
         message=r"(?i)\bunknown (?:optimi[sz]er|optim|model|arch\w*|scheduler|dataset|loss|backbone|activation|"
                 r"norm\w*|encoder|decoder|tokenizer|task|mode|method|type|option|config)\b|"
                 r"not (?:a )?registered|not (?:found )?in (?:the )?registry|\bavailable(?: \w+)?: \[|"
                 r"must be one of|expected one of|supported (?:values|options|models|types) (?:are|:)|"
                 r"invalid (?:model|optimi[sz]er|scheduler|dataset|backbone|arch\w*|choice)\b|"
                 r"is not supported\. (?:available|choose|supported)"),
    Rule("config_missing_setting", CONFIG, "a required setting is missing or inconsistent",
         reason="libraries check their settings up front (Lightning's MisconfigurationException, a config "
                "module's assertion, 'requires an eval_dataset', a message naming the argument to change); the "
                "same settings fail on every retry",
         types=("MisconfigurationException", "ConfigurationError", "ConfigError", "InvalidConfigError"),
         message=r"(?m)^(?:\w+\.)*(?:ValueError|AssertionError|TypeError): .*(?:\brequires an? \w+|"
                 r"must (?:be )?(?:specified|provided|set)\b|(?:is|are) not (?:set|specified)\b|"
                 r"please (?:specify|provide|set) )|could not find the monitored key|"
                 r"(?:training )?argument is set to .* which is not|consider changing the `?\w+`? (?:via|in) |"
                 r"Check batch related parameters|train_batch_size is not equal to"),
    Rule("config_module_assert", CONFIG, "a library rejected its configuration",
         reason="an assertion or ValueError raised in a library's config module is a bad setting, not a bug",
         types=("AssertionError", "ValueError"),
         innermost=r"/(?:\w+_)?config(?:uration)?(?:_\w+)?\.py\||/configs?/|/arguments?\.py\||training_args\.py\|"),
    Rule("config_attribute", CONFIG, "a configuration entry is missing",
         reason="an argparse Namespace or config object without the attribute means a missing option",
         message=r"'(?:Namespace|DictConfig|ListConfig|EasyDict|AttrDict|Config|ConfigDict|Munch|Args|Arguments|"
                 r"TrainingArguments|H[Pp]arams)' object has no attribute"),
    Rule("config_keyerror", CONFIG, "a configuration key is missing",
         reason="a KeyError on a config/args/environ lookup is a missing setting, not a data problem",
         types=("KeyError",),
         site=r"(?i)\b(?:cfg|config|conf|args|hparams|hps|params|opts?|options|settings|hyp|environ)\w*(?:\[|"
              r"\.get\()|(?:^|/)(?:configs?|cfg|settings|options|arguments|args)\w*\.py\|"),
    Rule("missing_package", CONFIG, "a package is missing or incompatible",
         remedy="install or pin the missing package in the job's environment",
         reason="an import failure is the environment, fixed by installing/pinning, not by retrying",
         types=("ModuleNotFoundError", "ImportError"), message=r"(?i)cannot find a working \w+ installation"),
    # ---- autograd, optimizer, loss and model families, then data
    Rule("autograd", GRAD, "autograd error",
         remedy="avoid in-place ops on tensors autograd saved; call backward once per graph (or retain_graph=True)",
         reason="graph misuse (double backward, in-place updates, detached or unused tensors) is deterministic",
         message=r"backward through the graph a second time|does not require grad|"
                 r"modified by an inplace operation|leaf Variable that requires grad (?:is being|"
                 r"has been) used in an in-place|appears to not have been used in the graph|"
                 r"grad can be implicitly created only for scalar outputs|"
                 r"returned nan values in its \d+\w* output|Expected to mark a variable ready only once|"
                 r"Expected to have finished reduction in the prior iteration|find_unused_parameters|"
                 r"Mismatch in shape: grad_output|returned an invalid gradient|"
                 r"register a hook on a tensor that doesn't require"),
    Rule("optimizer", OPTIM, "optimizer misuse",
         reason="optimizer/scheduler/GradScaler API errors are raised by the update step itself",
         message=r"optimizer got an empty parameter list|required positional argument: 'closure'|"
                 r"requires closure|can't optimize a non-leaf Tensor|appear in more than one parameter group|"
                 r"params argument given to the optimizer should be an iterable|"
                 r"optimizer can only optimize Tensors|unscale FP16 gradients|"
                 r"unscale_\(\) has already been called|No inf checks were recorded|Tried to step \d+ times"),
    Rule("nonfinite_loss", LOSS, "the loss became NaN/inf",
         remedy="lower the learning rate, clip gradients, check the inputs for NaN",
         reason="training-loop guards raise on a non-finite loss; the loss (or lr) is where to look",
         types=("FloatingPointError",),
         message=r"(?i)loss (?:is|became|became infinite or|=) ?(?:nan|inf)|non-finite loss|loss is not finite"),
    Rule("loss_target", LOSS, "loss inputs/targets invalid",
         remedy="check the targets: class indices in [0, C), dtype long for cross-entropy, float for BCE",
         reason="class indices out of range, BCE inputs outside [0,1], CTC lengths and target shapes are loss "
                "contract violations",
         message=r"Target -?\d+ is out of bounds|multi-target not supported|0D or 1D target tensor expected|"
                 r"Expected input batch_size \(\d+\) to match target batch_size|"
                 r"Target size \(.*\) must be the same as input size|all elements of (?:input|"
                 r"target) should be between 0 and 1|input_lengths|target_lengths|ctc_loss|nll_loss|"
                 r"only batches of spatial targets supported|Expected floating point type for target|"
                 r"Found dtype \w+ but expected \w+|"
                 r"result type Float can't be cast to the desired output type Long"),
    Rule("loss_dtype", LOSS, "loss target has the wrong dtype",
         reason="classification losses want Long targets, regression losses float ones",
         message=r"expected scalar type \w+ but found \w+|not implemented for '\w+'",
         frames=r"torch/nn/modules/loss\.py|\|(?:\w*loss\w*|\w*cross_entropy\w*|criterion)\|"),
    Rule("shape_mismatch", MODEL, "tensor shape/dtype mismatch", by_phase=True,
         reason="shape, rank and dtype errors are raised where tensors meet layers; the phase tells which code",
         message=r"mat1 and mat2 shapes cannot be multiplied|size mismatch|shapes cannot be multiplied|"
                 r"Expected \d+D .*input to \w+|Expected \d+-dimensional input|to have \d+ channels, but got|"
                 r"Given groups=\d+|input\.size\(-1\) must be equal to input_size|Expected hidden\S* size|"
                 r"einsum\(\)|shape '\[[^\]]*\]' is invalid for input of size|Sizes of tensors must match|"
                 r"The size of tensor a \(\d+\) must match|Dimension out of range|index out of range in self|"
                 r"attn_mask|Expected more than 1 value per channel|Calculated (?:padded )?(?:input|output) size|"
                 r"Output size is too small|Kernel size can't be greater|must have the same dtype|"
                 r"expected scalar type \w+ but found|Input type \(.*\) and (?:weight|bias) type|"
                 r"doesn't match the broadcast shape|cannot be broadcast|forward\(\) (?:missing|"
                 r"got an unexpected)|expected (?:m1|mat1) and (?:m2|mat2) to have the same dtype"),
    Rule("data_decode", DATA, "a data sample could not be read", phase="data_loading",
         reason="undecodable files, unreadable images and ragged batches come from the dataset",
         types=("UnicodeDecodeError", "UnidentifiedImageError", "DecompressionBombError"),
         message=r"cannot identify image file|image file is truncated|broken data stream|Truncated File Read|"
                 r"Invalid data found when processing input|File contains data in an unknown format|libpng error|"
                 r"Premature end of JPEG|!_src\.empty\(\)|stack expects each tensor to be equal size|"
                 r"each element in list of batch should be of equal size|batch must contain tensors|"
                 r"num_samples should be a positive integer value|Found 0 files|Couldn't find any class folder"),
    Rule("worker_exception", DATA, "", phase="data_loading",
         reason="any exception raised inside a DataLoader worker process belongs to the data pipeline",
         frames=r"\|_worker_loop\|"),
    Rule("dataloader_worker", DATA, "DataLoader worker failed", phase="data_loading",
         reason="an exception re-raised from a worker, or a worker exiting, is the data pipeline's",
         message=r"Caught \w+ in DataLoader worker process|"
                 r"DataLoader worker \(pids?\(?s?\)? ?[\d, ]+\) exited unexpectedly|DataLoader timed out after|"
                 r"Pin memory thread exited unexpectedly"),
    Rule("data_file_missing", DATA, "data file not found", phase="data_loading",
         reason="a missing file that is neither a checkpoint nor a config is a dataset path",
         types=("FileNotFoundError",), message=r"No such file or directory"),
    Rule("optimizer_component", OPTIM, "", phase="optimization_step",
         reason="an error raised inside optimizer or scheduler code (its construction included) with no more "
                "specific rule belongs to the optimizer, whichever phase the loop was in",
         innermost=_OPTIM_FRAMES),
    Rule("by_phase", UNKNOWN, "", by_phase=True,
         reason="a generic exception is attributed to the phase it was raised in; without one it is unknown"),
)

def restartable(rule: Rule) -> bool:
    """Would a restart help?  The rule's own verdict, else its category's."""
    return rule.category in TRANSIENT if rule.transient is None else rule.transient


# Phase hints from frames, as (phase, strong, regex over "file|func|source"); each frame takes the first
# matching row.  Strong hints name an enclosing activity (the deepest one wins); weak ones (forward, loss)
# only apply when no strong hint exists, because a forward inside validate() is validation.
FRAME_PHASES: tuple[tuple[str, bool, str], ...] = (
    ("forward_pass", False, r"torch/utils/checkpoint\.py"),
    ("initialization", True, r"(?:torch|bitsandbytes)/optim/[^|]*\|__init__\||torch/utils/data/[^|]*\|__init__\|"),
    ("optimization_step", True,
     r"torch/optim/|bitsandbytes/optim/|deepspeed/ops/adam|apex/optimizers/|transformers/optimization\.py|"
     r"\|(?:get|create|build|make|configure|init|setup)_?(?:optimi[sz]ers?|scheduler|lr_scheduler)\w*\|"),
    # (torch.compile's torch/_dynamo/eval_frame.py evaluates frames of any code: not an evaluation)
    ("validation", True,
     r"/evaluation/|/evaluators?/|(?:^|/)(?<!_dynamo/)\w*_?eval(?:uator|uation)?\w*\.py\||\|(?:compute_metrics|evaluate|on_sanity_check\w*|"
     r"\w*evaluation_loop|\w*(?:validation|test)_step\w*|\w*_?(?:eval|evaluate)_\w+|_run_sanity_check)\|"),
    ("initialization", True,
     r"argparse\.py|hydra/|\|(?:parse_args|parse_config|load_config|get_config|"
     r"init_distributed\w*|init_process_group|setup_ddp)\|"),
    ("data_loading", True,
     r"torch/utils/data/|/datasets/|torchvision/(?:datasets|io|transforms)/|/PIL/|\|(?:__getitems?__|__next__|"
     r"\w*collate\w*|_worker_loop|fetch|load_image|_load_image|pil_loader|default_loader|read_image|load_sample|"
     r"get_item)\|"),
    ("backward_pass", True, r"\.backward\(|autograd\.grad\(|torch/autograd/|\|backward\||manual_backward"),
    ("optimization_step", True,
     r"\w*(?:optim|opt|optimizer|scaler|sched\w*)\.step\(|\.zero_grad\(|clip_grad_norm_|\|"
     r"optimizer_step\|"),
    ("initialization", True,
     r"torch/serialization\.py\|(?!_?(?:legacy_)?save)|torch\.load\(|\.load_state_dict\(|\|load_model\||"
     r"safetensors/torch\.py\|load"),
    ("checkpoint_saving", True,
     r"torch/serialization\.py|safetensors|torch\.save\(|(?i:checkpoint|ckpt)|\|(?:save|save_model|save_pretrained)\|"),
    # A user's function or module named after evaluation (validate(), val.py) is the eval loop; a library's
    # (librosa's valid_audio, an argument validator) checks its inputs, so this row reads user frames only.
    ("validation", True,
     r"^(?![^|]*(?:site-packages|dist-packages|/lib/python\d))(?:[^|]*\|"
     r"(?:\w*_)?(?:val|valid|validate|validation|eval|evaluate|evaluation|test)(?:_\w*)?\||(?:[^|]*/)?"
     r"(?:val|valid|validate|validation|eval|evaluate|evaluation|test)\.py\|)"),
    # Wrapping a model (FSDP/DDP construction, accelerate's prepare, deepspeed.initialize) is setting it up.
    ("model_setup", True,
     r"\|(?:build|create|get|make|init|setup|load)_?(?:model|network|net|backbone|arch)\w*\||from_pretrained|"
     r"torch/distributed/fsdp/[^|]*\|__init__\||torch/nn/parallel/distributed\.py\|__init__\||"
     r"accelerate/accelerator\.py\|prepare\w*\||deepspeed/__init__\.py\|initialize\|"),
    ("loss_computation", False,
     r"torch/nn/modules/loss\.py|\|(?:\w*loss\w*|criterion|\w*entropy\w*|kl_div)\||\b(?:criterion|loss_fn|"
     r"loss_func|compute_loss)\(|F\.\w*(?:loss|entropy)\w*\("),
    ("forward_pass", False,
     r"\|forward\||\|_conv_forward\||torch/nn/modules/|torch/nn/functional\.py|transformers/models/|timm/models/"),
)

# The probe's phase is coarse where it cannot see inside a step: from one optimizer step to the next
# backward it says forward_pass (the next batch's loading, the forward, the loss and the script's own code
# all run there), and a checkpoint loaded before the first step reads as data loading.  Frames that show
# a phase win over these readings.
# Phase hints from output lines and exception messages, when no frame names one: loops log where they are.
LINE_PHASES: tuple[tuple[str, str], ...] = (
    ("validation", r"^(?:Testing|Validation|Validating|Evaluating|Evaluation|Sanity Checking)\b.*DataLoader|"
                   r"Sanity Checking|sanity check|\bd2\.evaluation\b|Evaluating predictions|"
                   r"\b(?:validation|test|eval)_step\(\)|validation_epoch_end|on_validation_\w+|compute_metrics"),
)

COARSE_PHASES = frozenset({"forward_pass"})
# A step runs closures (LBFGS, Lightning's training_step closure inside optimizer.step): a forward or loss
# hint deeper than the step's frame is what failed.
LEAF_PHASES = frozenset({"optimization_step"})
# A frame's phase is finer than the probe's, except inside these: a forward or a step run by validation is
# still validation.
ENCLOSING_PHASES = frozenset({"validation"})
PHASE_REFINEMENTS = frozenset({("data_loading", "initialization")})

# Hangs: (name, category, summary, reason, regex over a frame), checked from the innermost frame outwards.
HANG_RULES: tuple[tuple[str, str, str, str, str], ...] = (
    ("hang_collective", NETWORK, "stuck in a collective or barrier",
     "a rank waiting in NCCL/gloo/c10d store waits for a peer that is gone or slow",
     r"torch/distributed/|distributed_c10d|all_reduce|allreduce|all_gather|reduce_scatter|broadcast|barrier|"
     r"(?i:nccl|gloo)|store\.wait|\|wait\|.*store|rendezvous|torch/nn/parallel/distributed\.py"),
    ("hang_dataloader", DATA, "stuck waiting for DataLoader workers",
     "the main thread waits on worker queues: a worker is blocked, dead or too slow",
     r"\|(?:_next_data|_get_data|_try_get_data|_worker_loop|_pin_memory_loop)\||torch/utils/data/"),
)

# How a death by signal reads when nothing in the output explains it (SIGKILL is handled separately).
SIGNAL_CAUSES = {
    "SIGSEGV": "segmentation fault (a native crash in an extension)",
    "SIGABRT": "aborted (SIGABRT: a C++ exception or failed assertion)",
    "SIGBUS": "bus error (SIGBUS: a bad mmap or exhausted shared memory)",
    "SIGTERM": "terminated by SIGTERM (time limit, preemption or a manual kill)",
    "SIGINT": "interrupted (SIGINT)",
    "SIGILL": "illegal instruction (a binary built for another CPU)",
    "SIGFPE": "floating point exception (SIGFPE, integer division by zero in native code)",
    "SIGHUP": "hung up (SIGHUP: the terminal or session went away)",
}
