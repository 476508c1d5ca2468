"""Small helpers for driving Airflow 3.3's React UI: what a user sees (visible text, labels, ARIA names), always
through explicit waits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.ui.conftest import ARTIFACTS, WAIT_SECONDS

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement


def text_is(text: str) -> str:
    """An XPath predicate: the element's whole visible text is ``text`` (no quotes in ``text``)."""
    return f"normalize-space()='{text}'"


def wait(driver: WebDriver, seconds: float = WAIT_SECONDS) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, seconds)


def visible(driver: WebDriver, xpath: str) -> WebElement:
    """The first visible element at ``xpath``, once there is one."""
    return wait(driver).until(EC.visibility_of_element_located((By.XPATH, xpath)), f"nothing visible at {xpath}")


def visible_all(driver: WebDriver, xpath: str, *, at_least_one: bool = True) -> list[WebElement]:
    """The visible elements at ``xpath``: once there is one (``at_least_one``), else as they are now."""
    if at_least_one:
        visible(driver, xpath)
    return [element for element in driver.find_elements(By.XPATH, xpath) if element.is_displayed()]


#: True when nothing else (a notification sliding away, a closing dialog's backdrop) is on top of the element's
#: centre, where a click lands.
_UNCOVERED = """
const rect = arguments[0].getBoundingClientRect();
const top = document.elementFromPoint(rect.left + rect.width / 2, rect.top + rect.height / 2);
return top !== null && (top === arguments[0] || arguments[0].contains(top));
"""


def click(driver: WebDriver, xpath: str) -> WebElement:
    """Click the element at ``xpath`` as a person would: once it is clickable, scrolled into view, and nothing
    covers it (Selenium's "clickable" is only visible and enabled: a notification over it takes the click)."""
    element = wait(driver).until(EC.element_to_be_clickable((By.XPATH, xpath)), f"nothing clickable at {xpath}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    wait(driver).until(lambda _: driver.execute_script(_UNCOVERED, element), f"something covers {xpath}")
    element.click()
    return element


def button(text: str) -> str:
    """A button by its visible text or its ARIA name (icon buttons have only the latter)."""
    return f"//button[{text_is(text)} or @aria-label='{text}']"


def dialog(driver: WebDriver) -> WebElement:
    return visible(driver, "//*[@role='dialog']")


def dialog_closed(driver: WebDriver) -> None:
    wait(driver).until(EC.invisibility_of_element_located((By.XPATH, "//*[@role='dialog']")), "the dialog stayed open")


def type_into(element: WebElement, text: str) -> None:
    """Replace what a (React-controlled) input holds by ``text``, as a user would."""
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)


def field_by_label(driver: WebDriver, label: str) -> WebElement:
    """The form control the dialog's ``<label>`` with this exact text is for."""
    element = visible(driver, f"//*[@role='dialog']//label[{text_is(label)}]")
    return driver.find_element(By.ID, element.get_attribute("for") or "")


def labels(driver: WebDriver) -> list[str]:
    """The visible labels of the dialog's fields, in order (a required field's ``*`` left out)."""
    found = driver.find_elements(By.XPATH, "//*[@role='dialog']//label")
    return [label.text.replace("*", "").strip() for label in found if label.is_displayed() and label.text.strip()]


def toast(driver: WebDriver, kind: str, title: str) -> str:
    """The visible text of the ``kind`` (success, error) notification titled ``title``, once it has slid in far
    enough to show more than its title (its description comes in last, from below the window's edge); then
    wait, as a person reading it would, until it has gone (while it is there, its region takes clicks meant for
    what is under it, e.g. a dialog's Save button)."""
    xpath = f"//*[@role='status' and @data-type='{kind}'][.//*[{text_is(title)}]]"
    notice = visible(driver, xpath)
    wait(driver).until(lambda _: notice.text.strip() != title, f"the {title!r} notification shows no description")
    text = notice.text
    wait(driver).until(EC.invisibility_of_element_located((By.XPATH, xpath)), f"the {title!r} notification stayed")
    return text


def screenshot(driver: WebDriver, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
