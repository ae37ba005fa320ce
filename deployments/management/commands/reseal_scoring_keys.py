from django.core.management.base import BaseCommand, CommandError

from deployments.actions import do_reseal_scoring_keys


class Command(BaseCommand):
    help = (
        "After a change of SECRET_KEY (the old one in SECRET_KEY_FALLBACKS): seal the services' scoring keys with "
        "the new one, so that the old one can be dropped. The keys and the services do not change."
    )

    def handle(self, *args: object, **options: object) -> None:
        resealed, unreadable = do_reseal_scoring_keys()
        self.stdout.write(f"Sealed {resealed} scoring key(s) with the current SECRET_KEY.")
        if unreadable:
            where = "; ".join(
                f"{key.service.workspace.name} / {key.service.name}: {key.get_slot_display().lower()}"
                for key in unreadable
            )
            raise CommandError(
                f"{len(unreadable)} key(s) open with neither SECRET_KEY nor SECRET_KEY_FALLBACKS and were left as "
                f"they were; regenerate them (the Keys page of each service): {where}"
            )
        self.stdout.write("SECRET_KEY_FALLBACKS no longer needs the old key for them.")
