"""How a streaming reply reaches the screen: few posts, none lost, spaced by what drawing costs."""
from stchat.tui.messages import TextFeed


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_post_waits_at_a_time_and_the_handler_takes_everything_gathered():
    clock, posts = Clock(), []
    feed = TextFeed(lambda: posts.append(clock.now), clock=clock)
    feed.add("Hello")
    feed.add(",")
    clock.now = 1.0
    feed.add(" world")  # the interval has passed, but the first post is still waiting
    assert posts == [0.0]
    assert feed.take() == ("Hello, world", 3)
    feed.add("!")
    assert posts == [0.0, 1.0]
    assert feed.take() == ("!", 1)
    clock.now = 1.05
    feed.add("?")  # none waiting, but within the interval: drawn with the next post
    assert posts == [0.0, 1.0]
    assert feed.take() == ("?", 1)


def test_a_costly_draw_spaces_the_posts_within_bounds():
    clock, posts = Clock(), []
    feed = TextFeed(lambda: posts.append(clock.now), clock=clock)
    feed.pace(0.012)  # 12 ms of UI time per draw: 0.3 s between draws keeps it at 4% of a core
    assert abs(feed.interval - 0.012 / TextFeed.UI_SHARE) < 1e-9
    feed.add("a")
    feed.take()
    clock.now = 0.2
    feed.add("b")
    assert posts == [0.0]
    clock.now = 0.31
    feed.add("c")
    assert posts == [0.0, 0.31]
    feed.pace(0.0005)
    assert feed.interval == TextFeed.MIN_INTERVAL  # a cheap draw: ten a second, no more
    feed.pace(1.0)
    assert feed.interval == TextFeed.MAX_INTERVAL  # a very costly one still shows progress
