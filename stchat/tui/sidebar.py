"""The chat screen's left column: a search box over the list of conversations.

It keeps the list's own behaviour in one place (search as you type, Enter from the search box
into the list, which chat a sidebar key means); what choosing, renaming or deleting a chat
does is the chat screen's (`chat.py`).
"""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label, ListItem, ListView

from stchat.storage import Conversation

NEW_TITLE = "New chat"


def title_from(text: str) -> str:
    """A new chat's title: its first message on one line, cut at 48 characters."""
    first = " ".join(text.strip().split())
    return first[:48] + ("…" if len(first) > 48 else "") or NEW_TITLE


class ConversationItem(ListItem):
    def __init__(self, conversation: Conversation):
        super().__init__(Label(conversation.title, markup=False), id=f"conversation-{conversation.id}")
        self.conversation_id = conversation.id


class ChatList(Vertical):
    """The search box (`#search`) and the conversations it finds (`#conversations`)."""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Search chats (ctrl+f)", id="search")
        yield ListView(id="conversations")

    async def show(self, current: int | None) -> None:
        """List the chats the search finds, `current` highlighted when it is one of them."""
        found = self.app.store.search(self.query_one("#search", Input).value)
        listing = self.query_one("#conversations", ListView)
        await listing.clear()
        await listing.extend(ConversationItem(c) for c in found)
        ids = [c.id for c in found]
        if current in ids:
            listing.index = ids.index(current)

    @on(Input.Changed, "#search")
    async def _search(self) -> None:
        await self.show(getattr(self.screen, "conversation_id", None))

    @on(Input.Submitted, "#search")
    def _search_done(self) -> None:
        listing = self.query_one("#conversations", ListView)
        if listing.index is None and len(listing):
            listing.index = 0
        listing.focus()

    def focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def target(self, current: int | None) -> int | None:
        """The conversation a sidebar key means: the highlighted one while the list has focus,
        else `current` (the one on screen)."""
        listing = self.query_one("#conversations", ListView)
        if listing.has_focus and isinstance(listing.highlighted_child, ConversationItem):
            return listing.highlighted_child.conversation_id
        return current

    def leave_search(self) -> bool:
        """Esc in the sidebar: clear the search (every chat listed again); False when the
        focus was not in the sidebar."""
        search = self.query_one("#search", Input)
        if not (search.has_focus or self.query_one("#conversations", ListView).has_focus):
            return False
        if search.value:
            search.value = ""
        return True
