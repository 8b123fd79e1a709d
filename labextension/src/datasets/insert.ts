// Insert the code that reads a sealed dataset into the active notebook, as a new cell below the active one.

import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';

export function readDatasetCode(name: string): string {
  // JSON string syntax is valid Python string syntax for what a dataset name can hold.
  return `from teelab.sealed_store import read_dataset\ndf = read_dataset(${JSON.stringify(name)})`;
}

export function insertReadDataset(tracker: INotebookTracker, name: string): boolean {
  const panel = tracker.currentWidget;
  if (!panel) {
    return false;
  }
  const notebook = panel.content;
  NotebookActions.insertBelow(notebook);
  notebook.activeCell?.model.sharedModel.setSource(readDatasetCode(name));
  return true;
}
