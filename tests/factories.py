from pathlib import Path

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from deployments import keys
from deployments.models import ComputeTarget, Membership, Model, ScoringKey, Service, Workspace

# A script the local compute target may run (settings.LOCAL_SCRIPT_DIRS).
EXAMPLE_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "score.py"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    password = factory.django.Password("password")


class WorkspaceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Workspace

    subscription_id = "sub-0001"
    resource_group = "rg-ml"
    name = factory.Sequence(lambda n: f"workspace{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    workspace = factory.SubFactory(WorkspaceFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.READER


class ComputeTargetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ComputeTarget

    workspace = factory.SubFactory(WorkspaceFactory)
    name = factory.Sequence(lambda n: f"target{n}")
    kind = ComputeTarget.Kind.LOCAL


class ModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Model

    workspace = factory.SubFactory(WorkspaceFactory)
    name = "best_model"
    version = factory.Sequence(lambda n: n + 1)
    path = "/models/best_model"


class ServiceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Service
        skip_postgeneration_save = True

    workspace = factory.SubFactory(WorkspaceFactory)
    name = factory.Sequence(lambda n: f"service-{n}")
    compute_target = factory.SubFactory(ComputeTargetFactory, workspace=factory.SelfAttribute("..workspace"))
    entry_script = str(EXAMPLE_SCRIPT)
    state = Service.State.HEALTHY

    @factory.post_generation
    def models(self, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            self.models.set(extracted if extracted is not None else [ModelFactory(workspace=self.workspace)])

    @factory.post_generation
    def scoring_keys(self, create: bool, extracted: object, **kwargs: object) -> None:
        """Its two keys, as do_deploy_service gives every service."""
        if create:
            for slot in ScoringKey.Slot:
                key = keys.generate()
                ScoringKey.objects.create(
                    service=self, slot=slot, sealed=keys.seal(key), digest=keys.key_hash(key), created=timezone.now()
                )


def local_service(workspace: Workspace, entry_script: Path, **settings: object) -> Service:
    """A service `churn` on this machine (the local target) that serves `entry_script` with the sample model."""
    target = ComputeTargetFactory(workspace=workspace, name="this-machine", kind=ComputeTarget.Kind.LOCAL)
    model = ModelFactory(
        workspace=workspace, name="sample-model", version=1, path=str(EXAMPLE_SCRIPT.parent / "sample_model")
    )
    return ServiceFactory(
        workspace=workspace,
        name="churn",
        compute_target=target,
        models=[model],
        entry_script=str(entry_script),
        **settings,
    )


def edit_form(service: Service, **changes: object) -> dict[str, object]:
    """The service's edit form as the page posts it, with `changes` made: every setting at the service's value, a
    ticked box as "on" and an unticked one absent (change it to False), an empty number as "". A change to None
    leaves that field out of the post."""
    from deployments.forms import ServiceSettingsForm

    data: dict[str, object] = {
        "compute_target": service.compute_target_id,
        "models": [m.pk for m in service.models.all()],
        "entry_script": service.entry_script,
        "image": service.image,
        "replicas": service.replicas,
        "version": service.version,
    }
    form = ServiceSettingsForm
    for name in (*form.ADVANCED, *form.RESOURCES, *form.AUTOSCALE, *form.LIVENESS):
        value = getattr(service, name)
        data[name] = "" if value is None else value
    data.update(changes)
    # `is`, not `in`: a change to 0 is a number to post (0 == False).
    return {
        name: "on" if value is True else value
        for name, value in data.items()
        if value is not None and value is not False
    }
