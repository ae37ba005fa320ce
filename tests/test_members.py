"""The Members page: owners add people to a workspace, change their roles and remove them, each change audited."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments.models import AuditEvent, Membership, Workspace
from tests.factories import MembershipFactory, UserFactory


def _members(workspace: Workspace) -> str:
    return reverse("deployments:workspace-members", args=[workspace.pk])


def _role_url(membership: Membership) -> str:
    return reverse("deployments:workspace-member-role", args=[membership.workspace_id, membership.pk])


def _remove_url(membership: Membership) -> str:
    return reverse("deployments:workspace-member-remove", args=[membership.workspace_id, membership.pk])


def _roles(workspace: Workspace) -> dict[str, str]:
    return {m.user.username: m.role for m in workspace.memberships.select_related("user")}


def test_an_owner_adds_a_member_who_then_sees_the_workspace(client: Client, alice: Any, workspace: Workspace) -> None:
    dave = UserFactory(username="dave")
    client.force_login(alice)

    response = client.post(_members(workspace), {"username": "dave", "role": "contributor"}, follow=True)

    assert "Added dave as Contributor." in response.content.decode()
    assert _roles(workspace) == {"alice": "owner", "dave": "contributor"}
    event = AuditEvent.objects.get(action=AuditEvent.Action.MEMBER_ADDED)
    assert (event.actor_name, event.target_repr, event.changes) == ("alice", "dave", {"role": [None, "contributor"]})
    client.force_login(dave)
    assert client.get(reverse("deployments:service-list", args=[workspace.pk])).status_code == 200


def test_unknown_users_and_members_already_in_are_form_errors(client: Client, alice: Any, bob: Any) -> None:
    workspace = Membership.objects.get(user=alice).workspace
    client.force_login(alice)

    unknown = client.post(_members(workspace), {"username": "nobody", "role": "reader"})
    again = client.post(_members(workspace), {"username": "bob", "role": "owner"})
    bad_role = client.post(_members(workspace), {"username": "bob", "role": "admin"})

    assert "No user has this name." in unknown.content.decode()
    assert "This user is a member already" in again.content.decode()
    assert bad_role.status_code == 200
    assert "Select a valid choice" in bad_role.content.decode()
    assert _roles(workspace) == {"alice": "owner", "bob": "reader"}
    assert not AuditEvent.objects.exists()


def test_an_owner_changes_a_role_and_removes_a_member(client: Client, alice: Any, bob: Any) -> None:
    bobs = Membership.objects.get(user=bob)
    workspace = bobs.workspace
    client.force_login(alice)

    client.post(_role_url(bobs), {"role": "contributor"})
    assert _roles(workspace)["bob"] == "contributor"
    client.post(_remove_url(bobs))

    assert _roles(workspace) == {"alice": "owner"}
    events = AuditEvent.objects.order_by("id")
    assert [(e.action, e.target_repr, e.changes) for e in events] == [
        ("member.role_changed", "bob", {"role": ["reader", "contributor"]}),
        ("member.removed", "bob", {"role": ["contributor", None]}),
    ]
    client.force_login(bob)
    assert client.get(reverse("deployments:service-list", args=[workspace.pk])).status_code == 404


def test_the_last_owner_can_neither_leave_nor_step_down(client: Client, alice: Any, workspace: Workspace) -> None:
    mine = Membership.objects.get(user=alice)
    client.force_login(alice)

    demoted = client.post(_role_url(mine), {"role": "reader"}, follow=True)
    removed = client.post(_remove_url(mine), follow=True)

    assert "A workspace needs an owner" in demoted.content.decode()
    assert "A workspace needs an owner" in removed.content.decode()
    assert _roles(workspace) == {"alice": "owner"}
    assert not AuditEvent.objects.exists()


def test_an_owner_may_leave_when_another_owner_remains(client: Client, alice: Any, workspace: Workspace) -> None:
    MembershipFactory(workspace=workspace, user=UserFactory(username="erin"), role=Membership.Role.OWNER)
    client.force_login(alice)

    response = client.post(_remove_url(Membership.objects.get(user=alice)))

    assert response["Location"] == reverse("deployments:home")
    assert _roles(workspace) == {"erin": "owner"}


def test_readers_and_contributors_see_members_but_change_nothing(
    client: Client, alice: Any, bob: Any, carol: Any, workspace: Workspace
) -> None:
    UserFactory(username="dave")
    alices = Membership.objects.get(user=alice)
    for user in (bob, carol):
        client.force_login(user)

        page = client.get(_members(workspace))

        assert page.status_code == 200
        assert "alice" in page.content.decode()
        assert "Add a member" not in page.content.decode()
        assert client.post(_members(workspace), {"username": "dave", "role": "owner"}).status_code == 403
        assert client.post(_role_url(alices), {"role": "reader"}).status_code == 403
        refused = client.post(_remove_url(alices))
        assert refused.status_code == 403
        # A page of the portal that says why, not a bare "403 Forbidden".
        assert "Only the workspace&#x27;s owners change its members." in refused.content.decode()
        assert ">Workspaces</a>" in refused.content.decode()
    assert _roles(workspace) == {"alice": "owner", "bob": "reader", "carol": "contributor"}
    assert not AuditEvent.objects.exists()


def test_other_workspaces_and_their_members_do_not_exist(
    client: Client, alice: Any, charlie: Any, workspace: Workspace
) -> None:
    charlies = Membership.objects.get(user=charlie)
    client.force_login(charlie)

    missing = client.get(_members(workspace))
    assert missing.status_code == 404
    assert b"not a member of" in missing.content  # the portal's page, the same as for a workspace that does not exist
    assert client.post(_members(workspace), {"username": "charlie", "role": "owner"}).status_code == 404
    client.force_login(alice)
    # A member id of charlie's workspace, through alice's workspace (where alice is owner): not found either.
    assert (
        client.post(reverse("deployments:workspace-member-remove", args=[workspace.pk, charlies.pk])).status_code == 404
    )
    assert Membership.objects.filter(pk=charlies.pk).exists()
    assert _roles(workspace) == {"alice": "owner"}


def test_member_changes_need_csrf_and_names_are_escaped(alice: Any, workspace: Workspace) -> None:
    MembershipFactory(workspace=workspace, user=UserFactory(username="<b>mallory</b>"))
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)

    page = strict.get(_members(workspace)).content.decode()
    theirs = Membership.objects.get(user__username="<b>mallory</b>")

    assert "<b>mallory</b>" not in page
    assert "&lt;b&gt;mallory&lt;/b&gt;" in page
    assert strict.post(_remove_url(theirs)).status_code == 403
    assert strict.post(_role_url(theirs), {"role": "owner"}).status_code == 403
    assert _roles(workspace)["<b>mallory</b>"] == "reader"


def test_adding_someone_another_owner_just_added_is_a_form_error(
    client: Client, alice: Any, workspace: Workspace, monkeypatch: Any
) -> None:
    # Two owners add dave at once: both forms pass the membership check before either saves.
    from deployments.forms import MemberAddForm

    original = MemberAddForm.clean_username

    def clean_then_other_owner_adds(form: MemberAddForm) -> str:
        username = original(form)
        MembershipFactory(workspace=workspace, user=form.user, role=Membership.Role.READER)
        return username

    dave = UserFactory(username="dave")
    monkeypatch.setattr(MemberAddForm, "clean_username", clean_then_other_owner_adds)
    client.force_login(alice)

    response = client.post(_members(workspace), {"username": "dave", "role": "owner"})

    assert response.status_code == 200
    assert "dave is already a member of this workspace." in response.content.decode()
    assert Membership.objects.get(user=dave).role == Membership.Role.READER
    assert not AuditEvent.objects.exists()


def test_an_owner_demoted_meanwhile_changes_nothing(alice: Any, workspace: Workspace) -> None:
    from deployments import actions

    erins = MembershipFactory(workspace=workspace, user=UserFactory(username="erin"), role=Membership.Role.OWNER)
    # alice passed the page's owner check; then erin made her a reader before her change ran.
    Membership.objects.filter(user=alice).update(role=Membership.Role.READER)

    with pytest.raises(actions.MembershipError, match="you no longer are one"):
        actions.do_remove_member(erins, acting_user=alice)
    with pytest.raises(actions.MembershipError, match="you no longer are one"):
        actions.do_change_member_role(erins, Membership.Role.READER, acting_user=alice)

    assert _roles(workspace) == {"alice": "reader", "erin": "owner"}
    assert not AuditEvent.objects.exists()
