"""vlpretrain: compact, data-efficient vision-language pretraining in JAX/Flax."""
import setuptools

# Versions installed together from scratch and tested with each other (Python 3.11).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "clu==0.0.12",
    "seqio==0.0.20",
    "tensorflow-cpu==2.21.0",
    "tensorflow==2.21.0",  # seqio's own requirement; pinned to the same release.
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "tensorboard==2.21.0",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "matplotlib==3.11.2",  # tools/plot_sampling.py
    "absl-py==2.5.1",
    "easy-vqa==1.0",
]

setuptools.setup(
    name="vlpretrain",
    version="0.1.0",
    description="Compact, data-efficient vision-language pretraining (JAX/Flax, t5x/seqio style).",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `tasks/` at the repository root holds the seqio registrations users edit; it is
    # installed as the subpackage `vlpretrain.tasks`.
    packages=setuptools.find_packages(include=["vlpretrain", "vlpretrain.*"]) + ["vlpretrain.tasks"],
    package_dir={"vlpretrain.tasks": "tasks"},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest==9.2.0"]},
    entry_points={"console_scripts": ["vlpretrain=vlpretrain.cli:main"]},
)
