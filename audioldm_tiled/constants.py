"""AudioLDM's audio constants, each derived from the ones above it.

These are the defaults of the public checkpoints. Code that has a model at hand reads the same values from its
config (``vocoder.config.sampling_rate``, ``vocoder.config.upsample_rates``, ``vae.config.block_out_channels``).
"""

SAMPLE_RATE = 16_000  # Hz, SpeechT5HifiGan.config.sampling_rate
UPSAMPLED_RATE = 48_000  # Hz, what AudioSR delivers
UPSAMPLE_MODEL = "haoheliu/audiosr_basic"  # the AudioSR checkpoint used unless another is named
UPSAMPLE_STEPS = 50  # AudioSR's DDIM steps, as its command line's --ddim_steps
HOP_LENGTH = 160  # samples per mel frame = prod(vocoder.config.upsample_rates)
N_FFT = 1024
WIN_LENGTH = 1024
N_MELS = 64  # vocoder.config.model_in_dim
F_MIN = 0.0
F_MAX = 8_000.0
LOG_MEL_FLOOR = 1e-5  # log(clamp(mel, LOG_MEL_FLOOR))
VAE_FACTOR = 4  # mel frames per latent frame = 2 ** (len(vae.config.block_out_channels) - 1)

assert SAMPLE_RATE % HOP_LENGTH == 0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
assert MEL_FRAMES_PER_SECOND % VAE_FACTOR == 0
LATENT_FRAMES_PER_SECOND = MEL_FRAMES_PER_SECOND // VAE_FACTOR  # 25
TRAINING_LATENT_FRAMES = 256  # AudioLDM was trained on 10.24 s clips

# Precisions by their short names (command line, benchmarks), as names of torch dtypes: no torch import needed here.
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed takes
# The length the command line and batch render when neither a length nor an input is given (the Python call keeps
# its diffusers parent's default, one training window).
COMMAND_SECONDS = 10.0
# Longer than any render (a year of audio): a length past it is a typing mistake, and would overflow sample counts.
MAX_SECONDS = 365 * 24 * 3600.0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audioldm-tiled")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


VERSION = _version()  # this library's, as installed (files made with it say so in their tags)
