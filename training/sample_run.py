"""What sample.py does with its flags, as functions: the checks of where the model, its
classifier and its autoguide come from, and one sampling run (restore, guide, draw,
record) for a validated `SampleRequest`."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from errors import RequestError, UserError
from training.families.base import GUIDANCE, PROMPTS
from training.families.request import SampleRequest


@dataclass(frozen=True)
class Sources:
    """Where the checkpoints come from: the model's `workdir` (at `step`, else its newest),
    a noise classifier (`classifier_workdir` and `classifier_config`) and an autoguide
    (`autoguide_workdir`, default the model's, `autoguide_config`, default the model's,
    at `autoguide_step`)."""

    workdir: str
    step: int | None = None
    classifier_workdir: str | None = None
    classifier_config: object = None
    autoguide_workdir: str | None = None
    autoguide_config: object = None
    autoguide_step: int | None = None

    @property
    def autoguided(self) -> bool:
        return self.autoguide_workdir is not None or self.autoguide_step is not None

    def check(self, *, classifier_scale=None, autoguidance_scale=None) -> None:
        """RequestError (naming sample.py's flags) for sources that do not go together."""
        for flag, step in (("--checkpoint_step", self.step),
                           ("--autoguide_step", self.autoguide_step)):
            if step is not None and step < 0:
                raise RequestError(f"{flag} must be >= 0, got {step}")
        if (self.classifier_workdir is None) != (self.classifier_config is None):
            raise RequestError("classifier guidance needs both --classifier_workdir and "
                               "--classifier_config")
        if classifier_scale is not None and self.classifier_workdir is None:
            raise RequestError("--classifier_scale needs a classifier: pass --classifier_workdir "
                               "and --classifier_config")
        if self.autoguide_config is not None and self.autoguide_workdir is None:
            raise RequestError("--autoguide_config needs --autoguide_workdir (the guide's run)")
        if autoguidance_scale is not None and not self.autoguided:
            raise RequestError("--autoguidance_scale needs an autoguide: pass --autoguide_step "
                               "and/or --autoguide_workdir")

    def request_scales(self, classifier_scale, autoguidance_scale) -> dict:
        """The request's guidance weights: None without the guide, 1 by default."""
        return {"classifier_scale": None if self.classifier_workdir is None
                else (1.0 if classifier_scale is None else classifier_scale),
                "autoguidance_scale": None if not self.autoguided
                else (1.0 if autoguidance_scale is None else autoguidance_scale)}


def read_prompts(prompt: str | None, prompts_file: str | None) -> tuple[str, ...] | None:
    """The prompts of `--prompt` or `--prompts_file` (one per line, blank lines skipped;
    None without either). RequestError for both, an unreadable file or one without prompts."""
    if prompt is not None and prompts_file is not None:
        raise RequestError("--prompt and --prompts_file exclude each other")
    if prompts_file is None:
        return None if prompt is None else (prompt,)
    try:
        lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--prompts_file {prompts_file} cannot be read: "
                        f"{' '.join(str(err).split())[:200]}") from None
    prompts = tuple(line.strip() for line in lines if line.strip())
    if not prompts:
        raise RequestError(f"no prompts in --prompts_file {prompts_file} (one per line)")
    return prompts


def draw(config, sources: Sources, request: SampleRequest) -> tuple[np.ndarray, dict]:
    """(samples, what the samples file records) of `request` from the model of `config`
    in `sources`. The family checks the request before any weights are restored."""
    from training import inference

    family = inference.load_family(config, sources.workdir, sources.step)
    family.accepts(request)
    family, state, step = inference.restore_latest(config, sources.workdir, step=sources.step,
                                                   family=family)
    # The classifier and the autoguide are placed on the model's mesh, to run beside it.
    mesh = inference.mesh_of(state)
    record = request.record()
    sampler = family.sampler_name(request)
    classifier = guide = None
    if sources.classifier_workdir is not None:
        cls_family, cls_state, cls_step = inference.restore_classifier(
            config, sources.classifier_config, sources.classifier_workdir, mesh=mesh)
        classifier = (cls_family, cls_state)
        record.update(classifier_workdir=np.str_(sources.classifier_workdir),
                      classifier_step=np.int64(cls_step))
        kind = "discriminator" if cls_family.is_discriminator else "classifier"
        sampler += f" + {kind} guidance (scale {request.classifier_scale:g})"
    if sources.autoguided:
        workdir = sources.autoguide_workdir or sources.workdir
        guide_family, guide_state, guide_step = inference.restore_guide(
            config, sources.autoguide_config or config, workdir, step=sources.autoguide_step,
            mesh=mesh)
        if Path(workdir).resolve() == Path(sources.workdir).resolve() and guide_step == step:
            raise RequestError(f"the autoguide is the model itself (step {guide_step} of "
                               f"{workdir}): pass an earlier --autoguide_step or another "
                               "--autoguide_workdir")
        guide = (guide_family, guide_state)
        record.update(autoguide_workdir=np.str_(workdir), autoguide_step=np.int64(guide_step))
        sampler += (f" + autoguidance (w={request.autoguidance_scale:g}, guide {workdir} "
                    f"step {guide_step})")
    generate = inference.make_generator(family, request, classifier=classifier, guide=guide)
    samples, nfe = generate(state)
    record.update(sampler=np.str_(sampler), nfe=np.int64(nfe), step=np.int64(step))
    guided = (family.num_classes or PROMPTS in family.capabilities)
    if guided and GUIDANCE in family.capabilities:
        w = (config.sampling.guidance_scale if request.guidance_scale is None
             else request.guidance_scale)
        record["guidance_scale"] = np.float64(w)
    if PROMPTS in family.capabilities:  # the prompt of every sample, aligned with them
        prompts = np.asarray(family.for_request(request).prompts, dtype=np.str_)
        record["prompts"] = prompts[generate.labels]
    elif generate.labels is not None:
        record["labels"] = generate.labels.astype(np.int32)
    return samples, record
